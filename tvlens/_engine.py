"""The one forward pass: a prompt batch's prefix computed once, then suffix runs with edits.

Context:
    Attention is causal: an edit at column c and layer l changes nothing at earlier columns, nor
    anything below layer l. A :class:`Prefix` of a :class:`~tvlens.prompts.PromptBatch` holds,
    for every layer from ``l0`` on, the keys and values of the columns before ``c0`` (the first
    column any later edit touches; TransformerLens's own KV cache builds them) and the residual
    stream of the remaining columns before each of those layers, computed with the prefix's
    ``base`` edits (e.g. a task vector at the last token). :func:`run` then runs only columns
    ``c0..`` from a layer ``start >= l0`` up, through TransformerLens's blocks attending to the
    cached keys and values, with any :mod:`tvlens._hooks` edits (the base edits at ``start`` and
    later are applied again), optionally with every prompt replicated (``replicas``: one head per
    replica), and returns the final residual stream of those columns and any activations asked
    for (``names``: hook_z, patterns, residuals), differentiable when run under grad.

    Positions (left or right padding, rotary and absolute positions, GQA, shortformer) follow
    from the full attention mask TransformerLens is given at every block. A run whose edits touch
    a column before ``c0``, a layer below ``start`` or a hook outside the blocks, or a model the
    cache cannot serve, falls back to a full forward by itself (with the same edits; logged).
    Tests hold every suffix run against the full forward (``tests/test_engine.py``).

Intuition:
    On 10-shot prompts (~80 tokens) a last-token patch needs one column of work per replica,
    not 80; the prefix's keys and values are shared by every replica.

>>> import torch, tvlens as tv
>>> from tvlens import _engine as engine
>>> from tvlens._hooks import AblateHeads
>>> model = tv.load_model("toy")
>>> batch = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=2, n=4).tokenize(model)
>>> pre = engine.prefix(model, batch)  # last column edited; suffix = 1 column
>>> out = engine.run(pre, [AblateHeads(((1, 0),), positions=(-1,))], start=1)
>>> engine.final_logits(model, out.last()).shape == (4, model.cfg.d_vocab)
True
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int

from tvlens import _backend
from tvlens._hooks import (AblateHeads, Activations, AddAt, AddPerRow, AddToHeads, Cache, CallPositions, Edit, PatchFrom,
                           SetHeadPerRow, Span, intervene)
from tvlens._memo import memo_key, tensor_digest
from tvlens.errors import ConfigError
from tvlens.prompts import PromptBatch
from tvlens.sites import resolve_columns

log = logging.getLogger(__name__)

__all__ = ["Budget", "Prefix", "SuffixRun", "clear_memo", "final_logits", "forward", "forward_logits", "head_chunks", "p_gold", "prefix", "rows_per_pass", "run",
           "to_model"]


# --- the model's head and the one device/dtype move ----------------------------------------------


def to_model(model, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the model's device, floating tensors in the model's dtype (the one place tensors move)."""
    dev = model.cfg.device
    return x.to(device=dev, dtype=model.cfg.dtype) if x.is_floating_point() else x.to(dev)


def final_logits(model, resid: Float[torch.Tensor, "batch d_model"]) -> Float[torch.Tensor, "batch d_vocab"]:
    """The model's head (ln_final, unembedding, soft cap) on last-token residuals only: unembedding
    every column would cost rows x positions x d_vocab floats (gigabytes for a 50k vocabulary)."""
    x = resid[:, None]  # [batch, 1, d_model]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    weight = _unembed_weight(model)
    if weight is None:
        logits = model.unembed(x)[:, 0]  # [batch, d_vocab]
    else:  # TransformerLens's own op on a kept copy of its weight: the same numbers, bit for bit
        logits = torch.nn.functional.linear(x[:, 0], weight, model.unembed.b_U)
    cap = getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


_UNEMBED_T: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (W_U's identity, W_U.T contiguous)


def _unembed_weight(model) -> torch.Tensor | None:
    """``W_U.T`` made contiguous once per weight version, for :func:`final_logits`.

    TransformerLens's ``Unembed.forward`` runs ``F.linear(x, W_U.T.contiguous(), b_U)``: a copy of
    the whole unembedding on every call (113 MB for SmolLM2, 0.2 s on a CPU core), which dominated
    last-column runs. The copy is kept and remade when ``W_U`` changes (its version counter). None
    (use the module) when hooks sit on the unembedding or gradients must reach ``W_U``.
    """
    unembed = getattr(model, "unembed", None)
    w = getattr(unembed, "W_U", None)
    if not isinstance(w, torch.Tensor) or w.ndim != 2 or (torch.is_grad_enabled() and w.requires_grad):
        return None
    if any(getattr(hp, "_forward_hooks", None) or getattr(hp, "_forward_pre_hooks", None)
           for hp in (unembed, getattr(unembed, "hook_in", None), getattr(unembed, "hook_out", None)) if hp is not None):
        return None
    key = (w.data_ptr(), w._version, w.device, w.dtype, tuple(w.shape))
    hit = _UNEMBED_T.get(model)
    if hit is None or hit[0] != key:
        hit = (key, w.detach().T.contiguous())
        _UNEMBED_T[model] = hit
    return hit[1]


def p_gold(logits: Float[torch.Tensor, "batch d_vocab"], gold: Int[torch.Tensor, " batch"]) -> Float[torch.Tensor, " batch"]:
    """Softmax probability (float32) of each row's gold token."""
    return logits.float().softmax(-1)[torch.arange(len(gold)), gold.to(logits.device)]


# --- which columns and layers an edit touches --------------------------------------------------


def _layer_of(name: str) -> int | None:
    """The block of a hook point ``blocks.{l}.*`` (None outside the blocks)."""
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def _positions(edit: Edit) -> tuple[int, ...] | None:
    """The prompt positions an edit may write (None: any column, e.g. an unknown edit kind)."""
    if isinstance(edit, AddAt):
        return tuple(s.position for s in edit.sites)
    if isinstance(edit, AddPerRow):
        return (edit.site.position,)
    if isinstance(edit, (SetHeadPerRow, AddToHeads)):
        return (edit.position,)
    if isinstance(edit, (AblateHeads, PatchFrom)):
        return edit.positions
    if isinstance(edit, _FromLayer):
        return _positions(edit.edit)
    return None


def first_column(edits: Sequence[Edit], span: Span, positions: Sequence[int] = ()) -> int:
    """The earliest column any of ``edits`` (or any of ``positions``) writes in any row (0 when one may write anywhere)."""
    c0 = int(span.last.max()) + 1
    todo = [tuple(positions)]
    for e in edits:
        if isinstance(e, Cache):
            continue  # reads only
        pos = _positions(e)
        if pos is None:
            return 0
        todo.append(pos)
    for pos in todo:
        for p in pos:
            cols = resolve_columns(p, span.last, span.first, "clip")  # clipped: never after a written column
            present = cols[cols >= 0]
            if len(present):
                c0 = min(c0, int(present.min()))
    return c0


def lowest_layer(model, edits: Sequence[Edit]) -> int | None:
    """The lowest block any of ``edits`` hooks (None when one hooks outside the blocks)."""
    layers = [_layer_of(n) for e in edits if not isinstance(e, Cache) for n in e.hook_names(model)]
    if any(x is None for x in layers):
        return None
    return min(layers, default=model.cfg.n_layers)


@dataclass(frozen=True, eq=False)
class _FromLayer(Edit):
    """``edit`` restricted to its hook points at blocks ``layer`` and later (a run resumed at ``layer``)."""

    edit: Edit
    layer: int

    def hook_names(self, model) -> tuple[str, ...]:
        return tuple(n for n in self.edit.hook_names(model) if (_layer_of(n) or 0) >= self.layer)

    def apply(self, name, act, pos):
        return self.edit.apply(name, act, pos)


def cache_unsupported_reason(model) -> str | None:
    """Why suffix runs cannot serve ``model`` (None when they can)."""
    backend_reason = _backend.suffix_cache_unsupported_reason(model)
    if backend_reason:
        return backend_reason
    cfg = model.cfg
    if getattr(cfg, "n_key_value_heads", None) is not None and getattr(cfg, "ungroup_grouped_query_attention", False):
        return "TransformerLens's KV cache does not support cfg.ungroup_grouped_query_attention"
    if getattr(cfg, "n_devices", 1) > 1:
        return "a model split over several devices"
    if getattr(cfg, "attention_dir", "causal") != "causal":
        return "bidirectional attention"
    return None


# --- the memory budget -------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """The one sub-batching policy: rows per suffix run under a memory budget."""

    max_bytes: int = 2**30  # activations one run may hold (rows x columns x layers)
    max_rows: int = 4096  # cap on rows per run, whatever the estimate

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_rows < 1:
            raise ConfigError(f"Budget needs positive max_bytes and max_rows, got {self.max_bytes}, {self.max_rows}")


# --- the prefix and the suffix runs ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Prefix:
    """A batch computed up to column ``c0`` at every layer from ``l0`` (see the module docstring)."""

    model: object
    batch: PromptBatch
    c0: int  # first column suffix runs compute
    l0: int  # lowest layer a suffix run may start at
    keys: tuple[torch.Tensor | None, ...]  # per layer: [batch, c0, kv_head, d_head] (None below l0); a bridge: [batch, kv_head, c0, d_head], every layer
    values: tuple[torch.Tensor | None, ...]
    resid: dict[int, torch.Tensor]  # layer -> [batch, suffix, d_model] before that block (base edits below it applied); n_layers: final
    shortformer: torch.Tensor | None  # shortformer models: [batch, suffix, d_model] positions of the suffix columns
    base: tuple[Edit, ...] = ()  # edits applied in ``resid`` (they write only suffix columns at layers >= l0)
    fallback: str | None = None  # why runs take the full forward (None: they take the suffix)
    lean: bool = True  # runs may take the shared-prefix lean blocks (tvlens._engine_lean) where they apply
    mask: torch.Tensor = field(init=False)  # [batch, pos] full attention mask on the model's device
    _stack: list = field(init=False, default_factory=list, repr=False)  # the lean blocks, built on first use

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask", to_model(self.model, self.batch.attention_mask))

    def lean_stack(self, names: Sequence[str], start: int):
        """The shared-prefix lean blocks for a run calling hooks ``names`` from ``start`` (None: TransformerLens's)."""
        from tvlens._engine_lean import SharedPrefixStack, lean_hooks_reason

        if not self.lean or lean_hooks_reason(self.model, names, max(start, self.l0)) is not None:
            return None
        if not self._stack:
            with torch.no_grad():
                self._stack.append(SharedPrefixStack(self.model, self.l0, self.c0, self.mask, self.keys, self.values))
        return self._stack[0]

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def width(self) -> int:
        """Columns of a suffix run."""
        return self.batch.tokens.shape[1] - self.c0

    def final(self) -> Float[torch.Tensor, "batch d_model"]:
        """The base run's final residual at each prompt's last token (a full forward when runs fall back)."""
        return run(self, start=self.model.cfg.n_layers).last()


@dataclass(frozen=True, eq=False)
class SuffixRun:
    """What a suffix run read: the final residual stream and ``names`` at columns ``c0..``."""

    c0: int
    resid: Float[torch.Tensor, "batch suffix d_model"]  # before ln_final
    acts: dict[str, torch.Tensor]  # hook name -> activation of the suffix columns (patterns: suffix query rows)
    last_col: Int[torch.Tensor, " batch"]  # each row's last token, as a column of the suffix
    store: Activations | None = None  # the same activations with their call's positions (a PatchFrom source)

    def at_last(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [batch, suffix, ...] at each row's last token."""
        return x[torch.arange(len(self.last_col)), self.last_col.to(x.device)]

    def last(self) -> Float[torch.Tensor, "batch d_model"]:
        """The final residual at each row's last token."""
        return self.at_last(self.resid)


def prefix(model, batch: PromptBatch, *, positions: Sequence[int] | None = (-1,), layer: int = 0,
           base: Sequence[Edit] = (), edits: Sequence[Edit] = (), prepare_rows: int = 64, lean: bool = True) -> Prefix:
    """The prefix of ``batch`` for runs that write ``positions`` (and whatever ``edits`` write) at ``layer`` and later.

    ``base`` edits are applied in the stored residual streams (every run includes them).
    ``positions=None``: runs may write any column (the prefix is empty; runs are full width).
    ``lean=False``: runs always take TransformerLens's blocks (the lean blocks are tested against them).
    """
    cfg = model.cfg
    span = Span(batch.first_index, batch.last_index)
    c0 = 0 if positions is None else first_column([*base, *edits], span, positions)
    c0 = min(c0, int(batch.last_index.min()))  # every last token is computed (the reads)
    low = lowest_layer(model, [*base, *edits])
    reason = cache_unsupported_reason(model)
    if low is None:
        reason = reason or "an edit hooks a point outside the blocks"
    l0 = min(layer, cfg.n_layers if low is None else low)
    if not 0 <= l0 <= cfg.n_layers:
        raise ConfigError(f"layer must lie in 0..{cfg.n_layers}, got {layer}")
    if reason:
        log.info("suffix runs fall back to full forwards: %s", reason)
        return Prefix(model, batch, 0, 0, (None,) * cfg.n_layers, (None,) * cfg.n_layers, {}, None, tuple(base), reason)
    keys: list[list[torch.Tensor]] = [[] for _ in range(cfg.n_layers)]
    values: list[list[torch.Tensor]] = [[] for _ in range(cfg.n_layers)]
    resid: dict[int, list[torch.Tensor]] = {}
    pos_parts = []
    bridge = _backend.is_bridge(model)
    with torch.no_grad():
        for start in range(0, len(batch), prepare_rows):
            sub = batch[start : start + prepare_rows]
            k, v, r, sp = (_prepare_bridge if bridge else _prepare)(model, sub, c0, l0, tuple(base))
            if k is None:  # the bridge's cache failed its check (recorded): every run is a full forward
                return prefix(model, batch, positions=positions, layer=layer, base=base, edits=edits,
                              prepare_rows=prepare_rows, lean=lean)
            for lay in (range(len(k)) if bridge else range(l0, cfg.n_layers)):  # a bridge's cache: every layer (none when c0 = 0)
                keys[lay].append(k[lay])
                values[lay].append(v[lay])
            for lay, x in r.items():
                resid.setdefault(lay, []).append(x)
            pos_parts.append(sp)
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    lean = lean and not bridge  # the lean blocks are built from HookedTransformer's components
    return Prefix(model, batch, c0, l0, tuple(cat(k) for k in keys), tuple(cat(v) for v in values),
                  {lay: torch.cat(xs) for lay, xs in resid.items()}, None if pos_parts[0] is None else torch.cat(pos_parts),
                  tuple(base), lean=lean)


def _prepare(model, sub: PromptBatch, c0: int, l0: int, base: tuple[Edit, ...]):
    """Keys/values of columns < c0 (TransformerLens's KV cache) and the suffix residuals of one sub-batch."""
    cfg = model.cfg
    toks, mask = to_model(model, sub.tokens), to_model(model, sub.attention_mask)
    span = Span(sub.first_index, sub.last_index)
    cache, x = _clean(model, toks, mask, c0, l0, span)  # x: [b, suffix, d_model] before block l0, unedited
    sp = None
    if cfg.positional_embedding_type == "shortformer":  # added to every block's queries and keys
        sp = model.pos_embed(toks[:, c0:], c0, mask)
    keys = {lay: cache.entries[lay].past_keys for lay in range(l0, cfg.n_layers)}
    values = {lay: cache.entries[lay].past_values for lay in range(l0, cfg.n_layers)}
    names = tuple(f"blocks.{lay}.hook_resid_pre" for lay in range(l0 + 1, cfg.n_layers))
    store = Cache(names)
    final = _blocks(model, x, l0, keys, values, mask, sp, [store, *base], span)  # cached before the base edits there
    resid = {l0: x, **{lay: store.store[f"blocks.{lay}.hook_resid_pre"] for lay in range(l0 + 1, cfg.n_layers)},
             cfg.n_layers: final}
    return keys, values, resid, sp


def _prepare_bridge(model, sub: PromptBatch, c0: int, l0: int, base: tuple[Edit, ...]):
    """:func:`_prepare` on a bridge: the keys/values of columns < c0 at every layer (Hugging Face's cache, layout
    ``[batch, kv_head, c0, d_head]``) and the suffix residuals from one suffix run; (None, ...) when the cache
    failed its check (then recorded, see :mod:`tvlens._backend`). The unedited part is kept as on a HookedTransformer
    (the memo below): a hit serves the keys and values, and without base edits the suffix residuals too."""
    cfg = model.cfg
    toks, mask = to_model(model, sub.tokens), to_model(model, sub.attention_mask)
    span = Span(sub.first_index, sub.last_index)
    key = _memo_key(model, c0, toks, mask, "hf")
    if (hit := _kept(model, key)) is not None:
        keys, values = hit.cache
        if not base:
            return keys, values, {lay: hit.resid[lay] for lay in range(l0, cfg.n_layers + 1)}, None
    else:
        keys = values = ()
        if c0 > 0:
            cache = _backend.new_hf_cache()
            with _backend.hf_cache_calls(model):
                final_residual(model, toks[:, :c0], mask[:, :c0], past_key_values=cache)
            kv = _backend.hf_cache_tensors(cache, cfg.n_layers)
            if kv is None or _backend.hf_cache_length(cache) != c0:
                _backend.mark_hf_cache_broken(model, f"a prefix of {c0} columns left {'no cache' if kv is None else f'{_backend.hf_cache_length(cache)} columns'} in it")
                return None, None, None, None
            keys, values = kv
    keep = key is not None and not base and hit is None  # a clean run of every layer, kept
    first = 0 if keep else l0
    names = tuple(f"blocks.{lay}.hook_resid_pre" for lay in range(first, cfg.n_layers))
    store = Cache(names)
    final = _bridge_suffix(model, toks, mask, c0, keys, values, None, [store, *base], span)
    if final is None:
        return None, None, None, None
    resid = {**{lay: store.store[n] for lay, n in zip(range(first, cfg.n_layers), names)}, cfg.n_layers: final}
    if keep:
        _keep(model, key, _Clean((keys, values), resid, sum(t.nbytes for t in (*keys, *values, *resid.values()))))
        resid = {lay: resid[lay] for lay in range(l0, cfg.n_layers + 1)}
    return keys, values, resid, None


def _bridge_suffix(model, toks, mask, c0: int, keys, values, rows, edits: Sequence[Edit], span: Span):
    """Columns ``c0..`` of ``toks`` (``rows`` of the prefix's keys/values) through the bridge, attending to a fresh
    Hugging Face cache of the prefix, inside ``edits``: the final residual, or None when the run did not extend
    the cache to the full width (the cache was ignored; recorded, and the caller takes a full forward)."""
    cache = _backend.new_hf_cache(keys, values, rows) if c0 > 0 else None
    with intervene(model, *edits, span=span), _backend.hf_cache_calls(model):
        out = final_residual(model, toks[:, c0:], mask, past_key_values=cache)
    if cache is not None and _backend.hf_cache_length(cache) != toks.shape[1]:
        _backend.mark_hf_cache_broken(model, f"a suffix run left {_backend.hf_cache_length(cache)} of {toks.shape[1]} columns in it")
        return None
    return out


# --- the unedited part of a prompt batch's prefix, kept across calls ---------------------------------
#
# Every analysis of one prompt set (an evaluation per vector, an ablation, a saliency pass, a linear fit) builds a
# prefix of the same prompts, and two parts of it are always computed without edits: the keys and values of the
# columns before c0, and the suffix columns below the lowest edited layer l0. Both are kept per model (weakly),
# keyed by the weights and thread count (tvlens._memo.memo_key: never while a hook is installed), the tokens, the
# mask and c0; least recently used first out above KV_MEMO_BYTES. A hit is the very tensors the first call
# computed (the suffix before block l0 is read at blocks.{l0}.hook_resid_pre of one unedited forward, the tensor
# TransformerLens's forward with stop_at_layer=l0 returns), so results are bit-identical to computing them again.


@dataclass(frozen=True, eq=False)
class _Clean:
    """The unedited part of one sub-batch's prefix."""

    cache: object  # TransformerLens's KV cache after the columns before c0, frozen (a bridge: its (keys, values) tensors)
    resid: dict[int, torch.Tensor]  # layer -> [batch, suffix, d_model] suffix residual before that block (n_layers: after the last)
    nbytes: int


_KV_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> OrderedDict(key -> _Clean)
KV_MEMO_BYTES = Budget().max_bytes  # per model; 0 turns the memo off


def _memo_key(model, c0: int, toks: torch.Tensor, mask: torch.Tensor, *kind: str) -> tuple | None:
    """The memo's key of a sub-batch's unedited prefix (None: the memo may neither serve nor keep it)."""
    state = memo_key(model) if KV_MEMO_BYTES > 0 else None
    return None if state is None else (*kind, state, c0, tensor_digest(toks, mask))


def _kept(model, key: tuple | None) -> _Clean | None:
    """The kept entry of ``key`` (marked most recently used), or None."""
    memo = _KV_MEMO.get(model)
    if key is None or memo is None or key not in memo:
        return None
    memo.move_to_end(key)
    return memo[key]


def _keep(model, key: tuple, entry: _Clean) -> None:
    """Keep ``entry`` if it fits the byte cap, evicting the least recently used beyond it."""
    if entry.nbytes <= KV_MEMO_BYTES:
        memo = _KV_MEMO.setdefault(model, OrderedDict())
        memo[key] = entry
        while sum(c.nbytes for c in memo.values()) > KV_MEMO_BYTES:
            memo.popitem(last=False)


def _clean(model, toks: Int[torch.Tensor, "batch pos"], mask: Int[torch.Tensor, "batch pos"], c0: int, l0: int, span: Span):
    """The frozen KV cache of the unedited columns before ``c0`` and the unedited suffix residual before block ``l0``:
    from the memo, or computed (and kept where the memo may serve)."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cfg = model.cfg
    key = _memo_key(model, c0, toks, mask)
    if (hit := _kept(model, key)) is not None:
        return hit.cache, hit.resid[l0]
    cache = TransformerLensKeyValueCache.init_cache(cfg, cfg.device, len(toks))
    if c0 > 0:
        model(toks[:, :c0], past_kv_cache=cache, attention_mask=mask[:, :c0], return_type=None)
    cache.freeze()
    if key is None:  # no memo: the suffix up to block l0 only
        return cache, model(toks[:, c0:], past_kv_cache=cache, attention_mask=mask[:, c0:], stop_at_layer=l0)
    names = tuple(f"blocks.{lay}.hook_resid_pre" for lay in range(cfg.n_layers))
    store = Cache(names)
    with intervene(model, store, span=span):
        final = model(toks[:, c0:], past_kv_cache=cache, attention_mask=mask[:, c0:], stop_at_layer=cfg.n_layers)
    resid = {**{lay: store.store[n] for lay, n in enumerate(names)}, cfg.n_layers: final}
    size = (sum(e.past_keys.nbytes + e.past_values.nbytes for e in cache.entries) + sum(x.nbytes for x in resid.values()))
    _keep(model, key, _Clean(cache, resid, size))
    return cache, resid[l0]


def clear_memo(model=None) -> None:
    """Forget the kept unedited prefixes (of ``model``, or of every model)."""
    if model is None:
        _KV_MEMO.clear()
    else:
        _KV_MEMO.pop(model, None)


def _blocks(model, x, start: int, keys, values, mask, shortformer, edits: Sequence[Edit], span: Span):
    """Blocks ``start..`` on the suffix columns ``x`` attending to the cached prefix, inside ``edits``."""
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    with intervene(model, *edits, span=span):
        for lay in range(start, model.cfg.n_layers):
            entry = TransformerLensKeyValueCacheEntry(keys[lay], values[lay], frozen=True)
            x = model.blocks[lay](x, past_kv_cache_entry=entry, attention_mask=mask, shortformer_pos_embed=shortformer)
    return x


def rows_per_pass(pre: Prefix, start: int | None = None, *, grad: bool = False, budget: Budget = Budget()) -> int:
    """Rows one suffix run from ``start`` may take under ``budget`` (the one sub-batching policy)."""
    cfg = pre.model.cfg
    start = pre.l0 if start is None else start
    w = pre.width if pre.fallback is None else pre.batch.tokens.shape[1]
    total = pre.batch.tokens.shape[1]
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    d_mlp = cfg.d_mlp or 4 * cfg.d_model
    per_layer = (2 * total * n_kv * cfg.d_head  # keys and values with the prefix appended
                 + 3 * cfg.n_heads * w * total  # scores, pattern, masked copy
                 + w * (3 * d_mlp + 8 * cfg.d_model + 3 * cfg.n_heads * cfg.d_head))
    layers = max(1, cfg.n_layers - start) if grad else 1
    per_row = 4 * (per_layer * layers + 3 * cfg.d_vocab)  # float32 bytes, plus the logits at the last token
    return int(max(1, min(budget.max_rows, budget.max_bytes // per_row)))


def run(pre: Prefix, edits: Sequence[Edit] = (), *, start: int | None = None, replicas: int = 1,
        rows: Int[torch.Tensor, " row"] | None = None, names: Sequence[str] = ()) -> SuffixRun:
    """Columns ``c0..`` of ``pre``'s prompts (``rows``, each ``replicas`` times) from block ``start`` up, with ``edits``.

    Row ``r * len(rows) + i`` of the run is replica ``r`` of prompt ``rows[i]`` (per-row edits
    index those rows). ``names``: hook points whose activations are returned (suffix columns).
    Differentiable under ``torch.enable_grad``; the caller chooses grad or not.
    """
    model, cfg = pre.model, pre.model.cfg
    start = pre.l0 if start is None else int(start)
    rows = torch.arange(len(pre)) if rows is None else rows.cpu()
    reps = rows.repeat(replicas)  # [replicas * rows] prompt row of each run row
    batch = pre.batch
    span = Span(batch.first_index[reps], batch.last_index[reps])
    reason = pre.fallback or _why_not_suffix(pre, edits, start, span)
    store = Cache(tuple(names))
    base = [_FromLayer(e, start) for e in pre.base] if reason is None else list(pre.base)
    mask = pre.mask[reps.to(pre.mask.device)]
    if reason is not None:
        if pre.fallback is None:
            log.info("full forward instead of a suffix run: %s", reason)
        with intervene(model, *base, *edits, store, span=span):
            out = final_residual(model, to_model(model, batch.tokens[reps]), mask)
        c0 = pre.c0
        acts = {n: _suffix_cols(n, a, c0) for n, a in store.store.calls[-1].items()} if names else {}
        return SuffixRun(c0, out[:, c0:], acts, batch.last_index[reps] - c0, store.store if names else None)
    idx = reps.to(pre.mask.device)
    if start == cfg.n_layers:
        out = pre.resid[start][idx]
    elif _backend.is_bridge(model):  # the bridge runs the suffix from block 0 (blocks below start: unedited, cheap)
        out = _bridge_suffix(model, to_model(model, batch.tokens[reps]), mask, pre.c0, pre.keys, pre.values, idx,
                             [*pre.base, *edits, store], span)
        if out is None:  # the cache was ignored: nothing trustworthy came back; the full forward instead
            object.__setattr__(pre, "fallback", _backend.suffix_cache_unsupported_reason(model))
            return run(pre, edits, start=start, replicas=replicas, rows=rows, names=names)
    elif (stack := pre.lean_stack(_hook_names(model, [*base, *edits, store]), start)) is not None:
        at = CallPositions(pre.c0, pre.width, span)
        with intervene(model, *base, *edits, store, span=span, at=at):
            out = pre.resid[start][idx]
            for lay in range(start, cfg.n_layers):
                out = stack.block(lay, out, rows.to(out.device), replicas)
    else:
        keys = [None if k is None else k[idx] for k in pre.keys]
        values = [None if v is None else v[idx] for v in pre.values]
        sp = None if pre.shortformer is None else pre.shortformer[idx]
        out = _blocks(model, pre.resid[start][idx], start, keys, values, mask, sp, [*base, *edits, store], span)
    acts = dict(store.store.calls[-1]) if names and store.store.calls else {}
    return SuffixRun(pre.c0, out, acts, batch.last_index[reps] - pre.c0, store.store if names else None)


def _hook_names(model, edits: Sequence[Edit]) -> list[str]:
    return [n for e in edits for n in e.hook_names(model)]


def _suffix_cols(name: str, act: torch.Tensor, c0: int) -> torch.Tensor:
    """A full-width activation restricted to the suffix columns (patterns: the suffix query rows)."""
    return act[:, :, c0:] if name.endswith(("hook_pattern", "hook_attn_scores")) else act[:, c0:]


def _why_not_suffix(pre: Prefix, edits: Sequence[Edit], start: int, span: Span) -> str | None:
    model = pre.model
    low = lowest_layer(model, edits)
    if low is None:
        return "an edit hooks a point outside the blocks"
    if low < start:
        return f"an edit hooks block {low}, below the run's start {start}"
    if start < pre.l0:
        return f"start {start} lies below the prefix's lowest layer {pre.l0}"
    if first_column(edits, span) < pre.c0:
        return f"an edit writes a column before the prefix's end {pre.c0}"
    return None


def head_chunks(heads: Sequence[tuple[int, int]], per: int) -> list[list[tuple[int, int]]]:
    """``heads`` grouped by layer (ascending) in chunks of at most ``per``: the replicas of one run."""
    layers = sorted({lay for lay, _ in heads})
    return [[hd for hd in heads if hd[0] == lay][i : i + per] for lay in layers
            for i in range(0, sum(hd[0] == lay for hd in heads), per)]


def run_rows(pre: Prefix, edits: Callable[[Int[torch.Tensor, " row"]], Sequence[Edit]] | Sequence[Edit] = (), *,
             start: int | None = None, budget: Budget = Budget(), read: Callable[[SuffixRun], torch.Tensor] | None = None,
             names: Sequence[str] = ()) -> torch.Tensor:
    """Every prompt of ``pre`` through :func:`run` in sub-batches under ``budget``, ``read`` of each concatenated.

    ``edits`` may be a function of the sub-batch's prompt rows. ``read`` defaults to the final
    residual at each prompt's last token.
    """
    per = rows_per_pass(pre, start, grad=torch.is_grad_enabled(), budget=budget)
    read = read or SuffixRun.last
    out = []
    for lo in range(0, len(pre), per):
        rows = torch.arange(lo, min(lo + per, len(pre)))
        es = edits(rows) if callable(edits) else edits
        out.append(read(run(pre, es, start=start, rows=rows, names=names)))
    return torch.cat(out)


# --- for clients that read other columns or run inside contexts the engine cannot see into -------


def head_logits(model, resid: Float[torch.Tensor, "row d_model"]) -> Float[torch.Tensor, "row d_vocab"]:
    """:func:`final_logits`'s map on residuals of any columns (the LTV loss's targets), differentiable,
    without ``model.unembed``'s per-call contiguous copy of W_U (~150 MB for GPT-2) and with fused norms."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    from tvlens._engine_lean import _NORMS, norm

    ln = getattr(model, "ln_final", None)  # absent when cfg.normalization_type is None
    if ln is not None:
        resid = norm(ln, resid) if type(ln).__name__ in _NORMS else ln(resid[:, None])[:, 0]
    return apply_softcap(resid @ model.W_U + model.b_U, model.cfg.output_logits_soft_cap)  # [row, d_vocab]


def full_width(model, batch: PromptBatch, reason: str) -> Prefix:
    """A prefix whose runs are full forwards (e.g. inside a caller's context manager the engine cannot see into)."""
    log.info("suffix runs fall back to full forwards: %s", reason)
    return Prefix(model, batch, 0, 0, (None,) * model.cfg.n_layers, (None,) * model.cfg.n_layers, {}, None, (), reason)


# --- full-width reads: one forward pass where every column is read -----------------------------


def _gather(name: str, act: torch.Tensor, last: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``act`` of one sub-batch at each row's column(s) ``cols`` ([b] or [b, k]); patterns: the last query's row."""
    rows = torch.arange(len(act), device=act.device)
    if name.endswith(("hook_pattern", "hook_attn_scores")):  # [b, head, query, key]: every key of the last query
        return act[rows, :, last.to(act.device)].float()
    cols = cols.to(act.device)
    return (act[rows[:, None], cols] if cols.ndim == 2 else act[rows, cols]).float()


def forward(model, batch: PromptBatch, edits: Callable[[PromptBatch], Sequence[Edit]] | Sequence[Edit] = (), *,
            names: Sequence[str] = (), at: Int[torch.Tensor, "batch ..."] | None = None, whole: Sequence[str] = (),
            batch_size: int = 64) -> tuple[Float[torch.Tensor, "batch d_model"], dict[str, torch.Tensor]]:
    """Full forward passes of ``batch`` (sub-batches of ``batch_size``, no grad) with ``edits``: for reads that
    need the whole prompt (a prefix would save nothing), e.g. activations at every layer or every column.

    Returns the final residual at each prompt's last token (float32) and ``{name: activation}``:
    ``names`` at each row's column ``at`` (``[batch]``, or ``[batch, k]`` for k columns a row;
    default its last token; attention patterns: the last token's query row over every key),
    ``whole`` at every column. ``edits`` may be a function of the sub-batch (per-row sources stay
    aligned) and are installed before the reads, so a read at an edited hook sees the edit.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if set(names) & set(whole):
        raise ConfigError(f"a hook point is asked for both at columns and whole: {sorted(set(names) & set(whole))}")
    out, caught = [], {n: [] for n in [*names, *whole]}
    with torch.no_grad():
        for i, sub in enumerate(batch.split(batch_size)):
            es = list(edits(sub) if callable(edits) else edits)
            store = Cache(tuple(dict.fromkeys([*names, *whole])))
            with intervene(model, *es, store, span=Span(sub.first_index, sub.last_index)):
                resid = final_residual(model, to_model(model, sub.tokens),
                                                to_model(model, sub.attention_mask))  # [b, pos, d_model]
            rows = torch.arange(len(sub))
            out.append(resid[rows, sub.last_index.to(resid.device)].float())
            cols = sub.last_index if at is None else at[i * batch_size : i * batch_size + len(sub)]
            for n in names:
                caught[n].append(_gather(n, store.store[n], sub.last_index, cols))
            for n in whole:
                caught[n].append(store.store[n].float())
    return torch.cat(out), {n: torch.cat(v) for n, v in caught.items()}


def forward_logits(model, tokens: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"],
                   edits: Sequence[Edit] = (), *, span: Span) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """One full forward of ``tokens`` with ``edits`` inside ``span``, gradients flowing: every column's logits.

    The reference the suffix runs are tested against: the naive LTV objective (``LTVConfig(fast=False)``,
    :class:`tvlens.ltv._objective.NaiveObjective`) reads its teacher-forced targets from it.
    """
    with intervene(model, *edits, span=span):
        return model(to_model(model, tokens), attention_mask=to_model(model, attention_mask))  # [batch, pos, vocab]


def final_residual(model, tokens, attention_mask=None, past_key_values=None, *, start_at_layer: int | None = None,
                   stop_at_layer: int | None = None):
    """The residual stream after the last block (before ``ln_final``), ``[batch, pos, d_model]``, on either backend:
    ``stop_at_layer=n_layers`` on a HookedTransformer, the bridge's forward stopped at ``ln_final`` on a bridge.
    ``stop_at_layer``: the stream entering that block instead (before its ``hook_resid_pre`` edits, on both).
    ``past_key_values``: a bridge's Hugging Face cache of the columns before ``tokens`` (``attention_mask`` then
    spans them too). ``start_at_layer``: ``tokens`` is the residual stream entering that block (the bridge still
    runs the blocks below it and discards them)."""
    stop = model.cfg.n_layers if stop_at_layer is None else stop_at_layer
    start = {} if start_at_layer is None else {"start_at_layer": start_at_layer}
    if not _backend.is_bridge(model):
        return model(tokens, attention_mask=attention_mask, stop_at_layer=stop, **start)
    cache = {} if past_key_values is None else {"past_key_values": past_key_values}
    with _backend.stopping_before(model, stop), warnings.catch_warnings():
        # transformers 5.25 renames past_key_values to cache= (a FutureWarning); the bridge takes the old name
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        return model(tokens, attention_mask=attention_mask, **cache, **start)
