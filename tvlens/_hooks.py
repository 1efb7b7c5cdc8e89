"""One intervention layer on TransformerLens hook points: add, replace, patch, ablate, cache.

Context:
    Every intervention is an :class:`Edit` (a reusable value) applied inside :func:`intervene`,
    the one context manager that installs hooks on a model and removes every one of them in
    ``finally`` (after success, an exception or KeyboardInterrupt). Contexts hold their own hook
    handles, so nested contexts may exit in any order. All edits share one position resolution
    (:class:`CallPositions`): per forward call, each row's prompt span is read from the attention
    mask TransformerLens uses (left or right padding), or given explicitly (``span=``); a
    position counts from the prompt's end when negative (-1 = last token) and from its start
    (0 = BOS) otherwise, as :func:`tvlens.sites.resolve_columns` defines. Edits are vectorised
    over rows (index tensors, no per-row Python loop).

Intuition:
    Hooks at ``blocks.{l}.*`` only see activations. A forward pre-hook on each block reads what
    the block is called with (the attention mask, the KV-cache entry -> offset); a pre-hook on
    ``model.embed`` and a hook on ``hook_embed`` tell an ordinary forward (tokens embedded inside
    ``forward``) from ``model.generate`` (which embeds the prompt and each sampled token itself and
    calls ``forward`` on residuals), so the prompt's span survives across generation steps with
    and without the KV cache.

>>> import torch, tvlens as tv
>>> from tvlens import interventions as iv
>>> model = tv.load_model("toy")
>>> tokens = model.to_tokens("kevi ->")
>>> with iv.cache(model, ["blocks.1.hook_resid_pre"]) as acts:
...     clean = model(tokens)
>>> acts["blocks.1.hook_resid_pre"].shape[-1] == model.cfg.d_model
True
>>> with iv.add(model, [tv.Site(1, -1)], torch.zeros(1, model.cfg.d_model)):
...     torch.equal(model(tokens), clean)
True
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int, Shaped

from tvlens import _backend
from tvlens.errors import ConfigError
from tvlens.sites import OutOfRange, Site, resolve_columns

GenerationPolicy = Literal["prompt", "every_token"]


@dataclass(frozen=True, eq=False)
class Span:
    """Each row's prompt, as absolute columns of its first (BOS) and last real token."""

    first: Int[torch.Tensor, " batch"]
    last: Int[torch.Tensor, " batch"]

    def __post_init__(self) -> None:  # kept on the CPU: positions are resolved there, once per call
        object.__setattr__(self, "first", self.first.detach().cpu())
        object.__setattr__(self, "last", self.last.detach().cpu())

    @classmethod
    def from_mask(cls, mask: Shaped[torch.Tensor, "batch pos"]) -> Span:
        """The real tokens of each row of an attention mask (1 = real), padded on either side."""
        cols = torch.arange(mask.shape[1], device=mask.device)
        real = mask.bool()
        first = torch.where(real, cols, mask.shape[1]).min(-1).values
        last = torch.where(real, cols, -1).max(-1).values
        return cls(first, last)


@dataclass(frozen=True, eq=False)
class CallPositions:
    """Where one forward call's columns lie: the one position resolution every edit uses."""

    offset: int  # absolute column of the call's first column (KV-cache length before the call)
    width: int  # columns in this call
    span: Span  # each row's prompt, absolute columns
    generating: bool = False  # a model.generate step: columns after the prompt are generated tokens

    @property
    def batch(self) -> int:
        return len(self.span.first)

    def columns(self, positions: Sequence[int], out_of_range: OutOfRange = "error") -> Int[torch.Tensor, "site batch"]:
        """Absolute column of each position in every row (-1 where a skipped position is absent)."""
        return torch.stack([resolve_columns(p, self.span.last, self.span.first, out_of_range) for p in positions])

    def local(
        self, positions: Sequence[int], out_of_range: OutOfRange = "error"
    ) -> tuple[Int[torch.Tensor, " n"], Int[torch.Tensor, " n"], Int[torch.Tensor, " n"]]:
        """(site index, row, column within this call) of every position that falls in this call."""
        cols = self.columns(positions, out_of_range) - self.offset  # [site, batch]
        ok = (cols >= 0) & (cols < self.width)  # absent (-1) and other calls' columns fall outside
        site, row = ok.nonzero(as_tuple=True)
        return site, row, cols[site, row]

    def generated(self) -> Bool[torch.Tensor, "batch pos"]:
        """Columns after each prompt's last token in a generation step (none outside generation)."""
        cols = self.offset + torch.arange(self.width)
        return (cols[None] > self.span.last[:, None]) & self.generating

    def real(self) -> Bool[torch.Tensor, "batch pos"]:
        """Columns of this call inside each row's prompt span."""
        cols = self.offset + torch.arange(self.width)
        return (cols[None] >= self.span.first[:, None]) & (cols[None] <= self.span.last[:, None])


# --- edits -----------------------------------------------------------------------------------


class Edit:
    """One intervention: the hook points it touches and what it does there (vectorised)."""

    def hook_names(self, model) -> tuple[str, ...]:
        raise NotImplementedError

    def apply(self, name: str, act: torch.Tensor, pos: CallPositions | None) -> torch.Tensor | None:
        """The new activation at hook ``name`` (None: unchanged)."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class AddAt(Edit):
    """``scale * values[i]`` added at (``operation="replace"``: written over) ``sites[i]``."""

    sites: tuple[Site, ...]
    values: Float[torch.Tensor, "site d_model"]
    scale: float = 1.0
    operation: Literal["add", "replace"] = "add"
    out_of_range: OutOfRange = "error"
    generation: GenerationPolicy = "prompt"  # "every_token": also every generated token, for position -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))
        if self.values.ndim != 2 or self.values.shape[0] != len(self.sites):
            raise ConfigError(f"values must be [site, d_model] with one row per site; got {tuple(self.values.shape)} for {len(self.sites)} sites")
        if self.operation not in ("add", "replace"):
            raise ConfigError(f"operation must be 'add' or 'replace', got {self.operation!r}")
        if self.generation not in ("prompt", "every_token"):
            raise ConfigError(f"generation must be 'prompt' or 'every_token', got {self.generation!r}")

    def hook_names(self, model) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.hook_name for s in self.sites))

    def apply(self, name, act: Float[torch.Tensor, "batch pos d_model"], pos):
        idx = [i for i, s in enumerate(self.sites) if s.hook_name == name]
        vals = (self.scale * self.values[idx]).to(device=act.device, dtype=act.dtype)  # [site, d_model]
        site, row, col = pos.local([self.sites[i].position for i in idx], self.out_of_range)
        last = [j for j, i in enumerate(idx) if self.sites[i].position == -1]
        every = self.generation == "every_token" and bool(last) and pos.generating
        if not len(row) and not every:
            return None  # no site of this hook in this call (e.g. a KV-cached generation step)
        if self.operation == "add":
            out = act.index_put((row.to(act.device), col.to(act.device)), vals[site.to(vals.device)], accumulate=True)
        else:
            keep = _last_of_duplicates(row * act.shape[1] + col)  # a later site wins, as in a loop
            out = act.index_put((row[keep].to(act.device), col[keep].to(act.device)), vals[site[keep].to(vals.device)])
        if every:
            gen = pos.generated().to(act.device)[..., None]  # [batch, pos, 1]
            v = vals[last[0]]
            out = out + gen * v if self.operation == "add" else torch.where(gen, v, out)
        return out


@dataclass(frozen=True, eq=False)
class AblateHeads(Edit):
    """The output ``attn.hook_z`` of each (layer, head) set to zero or to its mean, at ``positions``.

    ``hook_z`` is per query head, so this works for grouped-query attention as well.
    ``positions=None`` ablates every column; ``means[layer]`` is [head, d_head] (see
    :meth:`Activations.mean`), needed for ``how="mean"``.
    """

    heads: tuple[tuple[int, int], ...]
    how: Literal["zero", "mean"] = "zero"
    means: Mapping[int, Float[torch.Tensor, "head d_head"]] | None = None
    positions: tuple[int, ...] | None = None
    out_of_range: OutOfRange = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple((int(layer), int(h)) for layer, h in self.heads))
        if self.positions is not None:
            object.__setattr__(self, "positions", tuple(self.positions))
        if self.how not in ("zero", "mean"):
            raise ConfigError(f"how must be 'zero' or 'mean', got {self.how!r}")
        missing = sorted({layer for layer, _ in self.heads} - set(self.means or {}))
        if self.how == "mean" and missing:
            raise ConfigError(f"mean ablation needs means[layer] ([head, d_head]) for layers {missing}; "
                              "cache hook_z on reference prompts and pass Activations.head_means()")

    def hook_names(self, model) -> tuple[str, ...]:
        bad = [(layer, h) for layer, h in self.heads if not (0 <= layer < model.cfg.n_layers and 0 <= h < model.cfg.n_heads)]
        if bad:
            raise ConfigError(f"heads {bad} are outside this model's {model.cfg.n_layers} layers x {model.cfg.n_heads} heads")
        return tuple(dict.fromkeys(f"blocks.{layer}.attn.hook_z" for layer, _ in self.heads))

    def apply(self, name, z: Float[torch.Tensor, "batch pos head d_head"], pos):
        layer = int(name.split(".")[1])
        hmask = torch.zeros(z.shape[2], dtype=torch.bool, device=z.device)
        hmask[[h for l_, h in self.heads if l_ == layer]] = True
        cols = _position_mask(pos, self.positions, self.out_of_range, z.shape[:2]).to(z.device)
        where = cols[:, :, None, None] & hmask[None, None, :, None]  # [batch, pos, head, 1]
        fill = torch.zeros((), dtype=z.dtype, device=z.device) if self.how == "zero" else self.means[layer].to(z)
        return torch.where(where, fill, z)


@dataclass(frozen=True, eq=False)
class AddPerRow(Edit):
    """Row ``b`` of the batch gets ``values[b]`` added at (``operation="replace"``: written over) ``site``."""

    site: Site
    values: Float[torch.Tensor, "batch d_model"]
    operation: Literal["add", "replace"] = "add"
    out_of_range: OutOfRange = "error"

    def __post_init__(self) -> None:
        if self.operation not in ("add", "replace"):
            raise ConfigError(f"operation must be 'add' or 'replace', got {self.operation!r}")

    def hook_names(self, model) -> tuple[str, ...]:
        return (self.site.hook_name,)

    def apply(self, name, act: Float[torch.Tensor, "batch pos d_model"], pos):
        if len(self.values) != act.shape[0]:
            raise ConfigError(f"AddPerRow has {len(self.values)} rows but the forward call has {act.shape[0]}")
        _, row, col = pos.local([self.site.position], self.out_of_range)
        if not len(row):
            return None
        vals = self.values[row].to(device=act.device, dtype=act.dtype)
        return act.index_put((row.to(act.device), col.to(act.device)), vals, accumulate=self.operation == "add")


@dataclass(frozen=True, eq=False)
class SetHeadPerRow(Edit):
    """Row ``b``'s ``attn.hook_z`` of head ``heads[b]`` = (layer, head) set to ``values[b]`` at ``position``.

    Many single-head patches in one forward pass: replicate a batch once per head and give each
    replica its own head (rows with layer -1 are left alone). Several heads a row: ``heads``
    [batch, k, 2] and ``values`` [batch, k, d_head] (slot j of row b sets head ``heads[b, j]``;
    slots with layer -1 are unused). Vectorised (one ``index_put`` per layer).
    """

    heads: Int[torch.Tensor, "batch *k 2"]  # (layer, head) per row (and slot); layer -1 = no patch
    values: Float[torch.Tensor, "batch *k d_head"]
    position: int = -1
    out_of_range: OutOfRange = "error"

    def __post_init__(self) -> None:
        if self.heads.ndim not in (2, 3) or self.heads.shape[-1] != 2 or self.values.shape[:-1] != self.heads.shape[:-1]:
            raise ConfigError(f"SetHeadPerRow needs heads [batch, 2] with values [batch, d_head], or heads [batch, k, 2] with "
                              f"values [batch, k, d_head]; got {tuple(self.heads.shape)} and {tuple(self.values.shape)}")

    def hook_names(self, model) -> tuple[str, ...]:
        flat = self.heads.reshape(-1, 2)
        used = flat[flat[:, 0] >= 0]
        layers = sorted({int(x) for x in used[:, 0].tolist()})
        bad = [x for x in layers if x >= model.cfg.n_layers] + [int(h) for h in used[:, 1].tolist() if h >= model.cfg.n_heads]
        if bad:
            raise ConfigError(f"heads outside this model's {model.cfg.n_layers} layers x {model.cfg.n_heads} heads: {bad}")
        return tuple(f"blocks.{layer}.attn.hook_z" for layer in layers)

    def apply(self, name, z: Float[torch.Tensor, "batch pos head d_head"], pos):
        if len(self.heads) != z.shape[0]:
            raise ConfigError(f"SetHeadPerRow has {len(self.heads)} rows but the forward call has {z.shape[0]}")
        layer = int(name.split(".")[1])
        _, row, col = pos.local([self.position], self.out_of_range)
        heads = self.heads if self.heads.ndim == 3 else self.heads[:, None]  # [batch, k, 2]
        values = self.values if self.values.ndim == 3 else self.values[:, None]  # [batch, k, d_head]
        hit, slot = (heads[row, :, 0] == layer).nonzero(as_tuple=True)  # [n] (row, slot) pairs, row-major
        if not len(hit):
            return None
        row, col = row[hit], col[hit]
        head = heads[row, slot, 1]
        dev = z.device
        return z.index_put((row.to(dev), col.to(dev), head.to(dev)), values[row, slot].to(device=dev, dtype=z.dtype))


@dataclass(frozen=True, eq=False)
class AddToHeads(Edit):
    """Row ``b`` gets ``values[b, i, h]`` added to ``blocks.{layers[i]}.attn.hook_z`` of head ``h`` at ``position``.

    With ``values`` zeros that require grad, the gradient of a loss with respect to ``values`` is
    its gradient with respect to every head's output at that position, from one backward pass
    (first-order attribution); the forward pass is unchanged. Vectorised (one ``index_put`` per layer).
    """

    layers: tuple[int, ...]
    values: Float[torch.Tensor, "batch layer head d_head"]
    position: int = -1
    out_of_range: OutOfRange = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.values.ndim != 4 or self.values.shape[1] != len(self.layers):
            raise ConfigError(f"values must be [batch, layer, head, d_head] with one layer entry per layer "
                              f"({len(self.layers)}); got {tuple(self.values.shape)}")

    def hook_names(self, model) -> tuple[str, ...]:
        bad = [x for x in self.layers if not 0 <= x < model.cfg.n_layers]
        if bad:
            raise ConfigError(f"layers {bad} are outside this model's 0..{model.cfg.n_layers - 1}")
        return tuple(f"blocks.{x}.attn.hook_z" for x in self.layers)

    def apply(self, name, z: Float[torch.Tensor, "batch pos head d_head"], pos):
        if len(self.values) != z.shape[0]:
            raise ConfigError(f"AddToHeads has {len(self.values)} rows but the forward call has {z.shape[0]}")
        i = self.layers.index(int(name.split(".")[1]))
        _, row, col = pos.local([self.position], self.out_of_range)
        if not len(row):
            return None
        dev = z.device
        return z.index_put((row.to(dev), col.to(dev)), self.values[row.to(self.values.device), i].to(device=dev, dtype=z.dtype),
                           accumulate=True)


@dataclass(frozen=True, eq=False)
class PatchFrom(Edit):
    """Activations of another run (``source``, from :func:`cache`) written into this run.

    ``positions=None`` replaces whole activations (same shapes); otherwise position ``p`` of
    source row ``b`` goes to position ``p`` of row ``b`` (a source of one row serves every row).
    ``heads`` restricts a per-head activation ([batch, pos, head, d_head]) to those heads.
    """

    source: Activations
    names: tuple[str, ...]
    positions: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    out_of_range: OutOfRange = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", (self.names,) if isinstance(self.names, str) else tuple(self.names))
        missing = [n for n in self.names if n not in self.source]
        if missing:
            raise ConfigError(f"the source run has no activations at {missing}; cache them: iv.cache(model, {list(self.names)})")

    def hook_names(self, model) -> tuple[str, ...]:
        return self.names

    def apply(self, name, act, pos):
        src = self.source[name].to(device=act.device, dtype=act.dtype)
        if self.positions is None:
            if src.shape[1] == pos.offset + act.shape[1] and pos.offset:
                src = src[:, pos.offset :]  # a KV-cached step of the same sequence
            if src.shape != act.shape:
                raise ConfigError(f"cannot patch all positions of {name}: source {tuple(src.shape)} vs this run "
                                  f"{tuple(act.shape)}; pass positions=[...] to patch chosen positions")
            new = src
        else:
            src_pos = self.source.positions[-1]
            if src.shape[0] not in (1, act.shape[0]):
                raise ConfigError(f"the source run has {src.shape[0]} rows, this run {act.shape[0]}; use as many rows, or one")
            scols = src_pos.columns(self.positions, self.out_of_range)  # [site, source batch]
            if src.shape[0] == 1:
                scols = scols.expand(-1, act.shape[0])
            site, row, col = pos.local(self.positions, self.out_of_range)
            present = scols[site, row] >= 0
            site, row, col = site[present], row[present], col[present]
            srow = row if src.shape[0] > 1 else torch.zeros_like(row)
            scol = scols[site, row] - src_pos.offset
            new = act.index_put((row.to(act.device), col.to(act.device)), src[srow.to(src.device), scol.to(src.device)])
        if self.heads is not None:
            hmask = torch.zeros(act.shape[2], dtype=torch.bool, device=act.device)
            hmask[list(self.heads)] = True
            new = torch.where(hmask[:, None], new, act)
        return new


@dataclass(eq=False)
class Activations:
    """Activations cached by :func:`cache`, per forward call, with each call's positions."""

    calls: list[dict[str, torch.Tensor]] = field(default_factory=list)
    positions: list[CallPositions | None] = field(default_factory=list)
    call_ids: list[int] = field(default_factory=list, repr=False)

    def _record(self, call: int, name: str, act: torch.Tensor, pos: CallPositions | None) -> None:
        if not self.call_ids or self.call_ids[-1] != call:
            self.calls.append({})
            self.positions.append(None)
            self.call_ids.append(call)
        self.calls[-1][name] = act.detach().clone()
        self.positions[-1] = pos if pos is not None else self.positions[-1]

    def __contains__(self, name: str) -> bool:
        return bool(self.calls) and name in self.calls[-1]

    def __getitem__(self, name: str) -> torch.Tensor:
        """The activation at ``name`` in the last forward call of the block."""
        if name not in self:
            raise KeyError(f"no cached activation {name!r}; cached: {sorted(self.calls[-1]) if self.calls else 'nothing (no forward ran)'}")
        return self.calls[-1][name]

    def mean(self, name: str) -> torch.Tensor:
        """Mean of ``name`` over every real token (inside its prompt span) of every call: [*rest]."""
        total, count = 0.0, 0
        for acts, pos in zip(self.calls, self.positions):
            real = pos.real() if pos is not None else torch.ones(acts[name].shape[:2], dtype=torch.bool)
            total = total + acts[name][real.to(acts[name].device)].sum(0)
            count += int(real.sum())
        if not count:
            raise ConfigError(f"no real token was cached at {name!r}")
        return total / count

    def head_means(self) -> dict[int, torch.Tensor]:
        """``{layer: mean hook_z [head, d_head]}`` for every cached ``blocks.{l}.attn.hook_z``."""
        names = self.calls[-1] if self.calls else {}
        return {int(n.split(".")[1]): self.mean(n) for n in names if n.endswith("attn.hook_z")}


@dataclass(frozen=True, eq=False)
class Cache(Edit):
    """Record (detached copies of) the activations at ``names`` into ``store``."""

    names: tuple[str, ...]
    store: Activations = field(default_factory=Activations)

    def hook_names(self, model) -> tuple[str, ...]:
        return self.names

    def apply(self, name, act, pos):
        return None  # intervene records it (it knows which forward call this is)


# --- the context -------------------------------------------------------------------------------


def _last_of_duplicates(keys: torch.Tensor) -> torch.Tensor:
    """Mask keeping only the last occurrence of each key."""
    order = torch.arange(len(keys))
    last = torch.full((int(keys.max()) + 1 if len(keys) else 0,), -1, dtype=torch.long).scatter_reduce(0, keys, order, "amax")
    return last[keys] == order


def _position_mask(pos: CallPositions | None, positions, out_of_range, shape) -> Bool[torch.Tensor, "batch pos"]:
    if positions is None:
        return torch.ones(shape, dtype=torch.bool)
    mask = torch.zeros(shape, dtype=torch.bool)
    _, row, col = pos.local(positions, out_of_range)
    mask[row, col] = True
    return mask


_CALLS = itertools.count()


class _Tracker:
    """Follows forward calls and gives each block call its :class:`CallPositions`."""

    def __init__(self, model, span: Span | None, at: CallPositions | None = None) -> None:
        self.model, self.span = model, span
        self.events: list = []  # since the last block call: tokens embedded, "hooked" once hook_embed saw them
        self.last_block = -1
        self.call = next(_CALLS)  # a new id for each forward call (unique across contexts)
        self.current: CallPositions | None = at  # fixed positions: hook points called without their block
        self.mask: torch.Tensor | None = None
        self.resolved = self.call if at is not None else -1  # the id of the call that ``current`` describes
        self.session: tuple[int, int, Span] | None = None  # generation: (batch, columns so far, prompt span)
        self.call_mask: torch.Tensor | None = None  # the bridge: the [batch, pos] mask its forward was given
        self.generating = False  # the bridge: this call is a step of model.generate (_backend.bridge_generate_step)

    def on_call(self, mask: torch.Tensor | None, generate_step: int | None = None) -> None:
        self.call_mask = mask
        self.generating = generate_step is not None
        if generate_step == 0:  # a new generate: its first call is the prompt
            self.session = None

    def on_embed(self, module, args) -> None:
        self.events.append(args[0])
        self.call = next(_CALLS)
        self.last_block = -1

    def on_hook_embed(self, act, hook) -> None:
        if self.events and not isinstance(self.events[-1], str):
            self.events.append("hooked")

    def on_block(self, layer: int, resid: torch.Tensor, args: tuple, kwargs: dict) -> None:
        mask = _backend.block_attention_mask(self.model, kwargs, self.call_mask)
        same = (self.current is not None and mask is self.mask and layer > self.last_block
                and tuple(resid.shape[:2]) == (self.current.batch, self.current.width))
        if not self.events and same:
            self.last_block = layer
            return  # a later block of the same call (every block gets the same mask object)
        if not self.events:
            self.call = next(_CALLS)  # a forward that starts at a layer (no embedding)
        offset = _backend.block_call_offset(layer, args, kwargs)
        batch, width = resid.shape[:2]
        self.current = self._resolve(batch, offset, width, mask)
        self.mask = mask  # held, so that its identity names this call while it runs
        self.resolved = self.call
        self.events, self.last_block = [], layer

    def _mask(self, batch: int, total: int, mask, tokens) -> torch.Tensor:
        if mask is not None:
            mask = mask.cpu()
            if mask.shape[1] < total:  # a mask of this call's columns only: the cached past is real
                mask = torch.cat([torch.ones(batch, total - mask.shape[1], dtype=mask.dtype), mask], 1)
            return mask[:, -total:]
        tok = self.model.tokenizer
        if tokens is not None and tok is not None and tok.pad_token_id is not None and tokens.shape == (batch, total):
            # TransformerLens builds no mask for right padding: trailing pad tokens are padding
            from transformer_lens.utilities.tokenize_utils import get_attention_mask

            return get_attention_mask(tok, tokens.cpu(), self.model.cfg.default_prepend_bos, padding_side="right")
        return torch.ones(batch, total, dtype=torch.long)

    def _resolve(self, batch: int, offset: int, width: int, mask) -> CallPositions:
        if self.span is not None:
            if len(self.span.first) != batch:
                raise ConfigError(f"span has {len(self.span.first)} rows but the forward call has {batch}")
            return CallPositions(offset, width, self.span)
        total = offset + width
        if self.events and isinstance(self.events[-1], str) and not self.generating:  # an ordinary forward from tokens
            self.session = None
            return CallPositions(offset, width, Span.from_mask(self._mask(batch, total, mask, self.events[-2])))
        if self.events:  # model.generate: it embeds the prompt and each new token itself
            embedded = sum(int(t.shape[-1]) for t in self.events if not isinstance(t, str))
            s = self.session
            regrown = offset == 0 and embedded == total  # a bridge's step: the whole sequence again, no cache
            if s is not None and s[0] == batch and (total == s[1] + embedded or regrown and total > s[1]) and offset in (0, s[1]):
                self.session = (batch, total, s[2])
                return CallPositions(offset, width, s[2], generating=True)
            span = Span.from_mask(self._mask(batch, total, mask, None))
            self.session = (batch, total, span)
            return CallPositions(offset, width, span, generating=True)
        self.session = None  # a forward on residuals (start_at_layer)
        return CallPositions(offset, width, Span.from_mask(self._mask(batch, total, mask, None)))


@contextlib.contextmanager
def intervene(model, *edits: Edit, span: Span | None = None, at: CallPositions | None = None) -> Iterator[None]:
    """Run ``model`` with ``edits`` inside the block; every hook is removed on the way out.

    ``span`` fixes each row's prompt span (absolute columns) instead of reading it from the
    attention mask, e.g. for prompts followed by teacher-forced answer tokens. ``at`` gives the
    positions of a caller that calls blocks' hook points itself (no block forward to read them from).
    """
    for e in edits:  # a task vector is checked where it is used: values edited in place after construction included
        # (a θ being trained, requires_grad, is the trainer's to check: it stops a diverged run with its checkpoint)
        if isinstance(e, AddAt) and not e.values.requires_grad and not bool(torch.isfinite(e.values).all()):
            from tvlens.errors import NonFiniteError

            v = e.values
            raise NonFiniteError(f"the vector added at {[str(s) for s in e.sites]} has non-finite values "
                                 f"({int(torch.isnan(v).sum())} nan, {int(torch.isinf(v).sum())} inf of {v.numel()}), "
                                 "changed in place after it was built; use a finite vector (reload it, or retrain)")
    tracker = _Tracker(model, span, at)
    by_name: dict[str, list[Edit]] = {}
    for e in edits:
        for n in e.hook_names(model):
            by_name.setdefault(n, []).append(e)
    unknown = [n for n in by_name if n not in model.hook_dict]
    if unknown:
        raise ConfigError(f"hook points {unknown} do not exist on this model; see model.hook_dict for the names")

    def make_hook(name: str, todo: list[Edit]):
        def hook(act, hook):
            pos = tracker.current if tracker.resolved == tracker.call and name.startswith("blocks.") else None
            for e in todo:
                if isinstance(e, Cache):
                    e.store._record(tracker.call, name, act, tracker.current if tracker.resolved == tracker.call else None)
                    continue
                if pos is None:
                    raise ConfigError(f"{type(e).__name__} works on hook points inside blocks (blocks.{{l}}.*), not {name!r}")
                new = e.apply(name, act, pos)
                act = act if new is None else new
            return act

        return hook

    lens_handles: list = []  # (hook point, LensHandle)
    torch_handles: list = []
    try:
        torch_handles.append(model.embed.register_forward_pre_hook(tracker.on_embed))
        torch_handles.extend(_backend.track_call_masks(model, tracker.on_call))
        for i, block in enumerate(model.blocks):
            torch_handles.append(block.register_forward_pre_hook(
                lambda m, args, kwargs, i=i: tracker.on_block(i, args[0] if args else kwargs["resid_pre"], args, kwargs),
                with_kwargs=True))
        for name, fn in [("hook_embed", tracker.on_hook_embed)] + [(n, make_hook(n, es)) for n, es in by_name.items()]:
            hp = model.hook_dict[name]
            hp.add_hook(fn, dir="fwd")
            lens_handles.append((hp, hp.fwd_hooks[-1]))
        yield
    finally:
        for h in torch_handles:
            h.remove()
        for hp, h in lens_handles:
            h.hook.remove()
            hp.fwd_hooks[:] = [x for x in hp.fwd_hooks if x is not h]


# --- one-line contexts -------------------------------------------------------------------------


def add(model, sites: Sequence[Site], values: Float[torch.Tensor, "site d_model"], *, scale: float = 1.0,
        out_of_range: OutOfRange = "error", generation: GenerationPolicy = "prompt", span: Span | None = None):
    """Context: ``scale * values[i]`` added to the residual stream at ``sites[i]``."""
    return intervene(model, AddAt(tuple(sites), values, scale, "add", out_of_range, generation), span=span)


def replace(model, sites: Sequence[Site], values: Float[torch.Tensor, "site d_model"], *, scale: float = 1.0,
            out_of_range: OutOfRange = "error", generation: GenerationPolicy = "prompt", span: Span | None = None):
    """Context: the residual stream at ``sites[i]`` overwritten with ``scale * values[i]``."""
    return intervene(model, AddAt(tuple(sites), values, scale, "replace", out_of_range, generation), span=span)


def ablate_heads(model, heads: Sequence[tuple[int, int]], *, how: Literal["zero", "mean"] = "zero",
                 means: Mapping[int, torch.Tensor] | None = None, positions: Sequence[int] | None = None,
                 out_of_range: OutOfRange = "error", span: Span | None = None):
    """Context: each (layer, head)'s ``hook_z`` zeroed (or set to ``means[layer][head]``)."""
    heads = tuple((int(layer), int(h)) for layer, h in heads)
    return intervene(model, AblateHeads(heads, how, means, None if positions is None else tuple(positions), out_of_range), span=span)


def patch(model, source: Activations, names: Sequence[str] | str, *, positions: Sequence[int] | None = None,
          heads: Sequence[int] | None = None, out_of_range: OutOfRange = "error", span: Span | None = None):
    """Context: the activations at ``names`` taken from ``source`` (a run cached with :func:`cache`)."""
    names = (names,) if isinstance(names, str) else tuple(names)
    edit = PatchFrom(source, names, None if positions is None else tuple(positions), None if heads is None else tuple(heads), out_of_range)
    return intervene(model, edit, span=span)


@contextlib.contextmanager
def cache(model, names: Sequence[str] | str, *, span: Span | None = None) -> Iterator[Activations]:
    """Context yielding :class:`Activations` filled with the activations at ``names`` of each call."""
    edit = Cache((names,) if isinstance(names, str) else tuple(names))
    with intervene(model, edit, span=span):
        yield edit.store
