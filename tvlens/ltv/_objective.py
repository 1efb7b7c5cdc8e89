"""The LTV training objective, computed naively or through the prefix-cached fast path.

Context:
    theta added at (layer l, column c) cannot change anything at columns before c, nor anything
    below layer l. The fast path therefore computes, once per set of prompts, (i) the keys and
    values of every column before ``c0`` (the earliest injected column over all rows and sites)
    at every layer, and (ii) the residual stream at the lowest injected layer for the columns
    from ``c0`` on. Each step then runs only those columns, from the lowest injected layer up,
    attending to the cached prefix. Tests check it against the naive full forward + backward.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from transformer_lens.utilities.activation_functions import apply_softcap

from tvlens.errors import ConfigError, PromptError
from tvlens.ltv._lean import norm
from tvlens.prompts import PromptSet, label_token_ids
from tvlens.sites import OutOfRange, Site, resolve_columns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetBatch:
    """Prompts (optionally followed by teacher-forced answer tokens) and where the loss is read."""

    tokens: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"]
    prompt_first: Int[torch.Tensor, " batch"]  # column of each prompt's BOS
    prompt_last: Int[torch.Tensor, " batch"]  # column of each prompt's last token
    tgt_row: Int[torch.Tensor, " target"]  # for each target token: its row,
    tgt_col: Int[torch.Tensor, " target"]  # the column whose logits predict it,
    tgt_tok: Int[torch.Tensor, " target"]  # its id,
    tgt_weight: Float[torch.Tensor, " target"]  # and 1 / (answer length)
    first_target: Int[torch.Tensor, " batch"]  # first gold token per row (accuracy)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def site_columns(self, sites: Sequence[Site], out_of_range: OutOfRange = "error") -> Int[torch.Tensor, "site batch"]:
        """Column of every site in every row (-1 where a skipped site is absent)."""
        return torch.stack([resolve_columns(s.position, self.prompt_last, self.prompt_first, out_of_range) for s in sites])


@dataclass(frozen=True)
class StepTargets:
    """The targets of one minibatch, rows renumbered 0..n-1 in the order of ``idx``."""

    n_rows: int
    tgt_row: Int[torch.Tensor, " target"]
    tgt_col: Int[torch.Tensor, " target"]
    tgt_tok: Int[torch.Tensor, " target"]
    tgt_weight: Float[torch.Tensor, " target"]
    first_target: Int[torch.Tensor, " batch"]

    def __len__(self) -> int:
        return self.n_rows


class TargetIndex:
    """Gathers a minibatch's targets in a few tensor ops (targets grouped by row once, here)."""

    def __init__(self, tb: TargetBatch) -> None:
        order = torch.argsort(tb.tgt_row, stable=True)
        self.tb = tb
        self.col, self.tok, self.weight = tb.tgt_col[order], tb.tgt_tok[order], tb.tgt_weight[order]
        self.count = torch.bincount(tb.tgt_row, minlength=len(tb))
        self.start = torch.cumsum(self.count, 0) - self.count
        self.single = bool((self.count == 1).all())  # one target per row: a plain gather

    def gather(self, idx: torch.Tensor | None) -> StepTargets | TargetBatch:
        if idx is None:
            return self.tb
        n = len(idx)
        if self.single:
            t, row = self.start[idx], torch.arange(n)
        else:
            count = self.count[idx]
            row = torch.repeat_interleave(torch.arange(n), count)
            first = torch.cumsum(count, 0) - count
            t = self.start[idx][row] + torch.arange(len(row)) - first[row]
        return StepTargets(n, row, self.col[t], self.tok[t], self.weight[t], self.tb.first_target[idx])


def build_targets(model, prompts: PromptSet, *, padding_side: str = "left", multi_token: bool = True) -> TargetBatch:
    """Tokenise ``prompts`` with their answers for teacher forcing (first token only if not multi_token)."""
    task = prompts.task
    batch = prompts.tokenize(model, padding_side=padding_side)  # validates labels and context
    if task.kind == "classification":
        label_token_ids(model, task)
    seqs, answers = [], []
    for i in range(len(batch)):
        real = batch.tokens[i][batch.attention_mask[i].bool()].tolist()
        ans = list(batch.answer_tokens[i]) if (multi_token and task.kind == "generation") else [batch.answer_tokens[i][0]]
        seqs.append(real + ans[:-1])
        answers.append((len(real), ans))
    width = max(len(s) for s in seqs)
    if width > model.cfg.n_ctx:
        raise PromptError(f"prompt plus answer is {width} tokens, over the model's context {model.cfg.n_ctx}")
    pad = batch.tokens[batch.attention_mask == 0][0].item() if (batch.attention_mask == 0).any() else 0
    n = len(seqs)
    tokens = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    first, last = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    rows, cols, toks, weights = [], [], [], []
    for i, (s, (plen, ans)) in enumerate(zip(seqs, answers)):
        start = width - len(s) if padding_side == "left" else 0
        tokens[i, start : start + len(s)] = torch.tensor(s)
        mask[i, start : start + len(s)] = 1
        first[i], last[i] = start, start + plen - 1
        for j, tok in enumerate(ans):
            rows.append(i)
            cols.append(start + plen - 1 + j)
            toks.append(tok)
            weights.append(1.0 / len(ans))
    return TargetBatch(
        tokens, mask, first, last, torch.tensor(rows), torch.tensor(cols), torch.tensor(toks),
        torch.tensor(weights), torch.tensor([a[0] for _, a in answers]),
    )


def weighted_nll(logits: Float[torch.Tensor, "target d_vocab"], tb: TargetBatch | StepTargets) -> torch.Tensor:
    """Mean over prompts of the mean teacher-forced NLL of each prompt's answer tokens."""
    nll = torch.nn.functional.cross_entropy(logits.float(), tb.tgt_tok, reduction="none")
    return (nll * tb.tgt_weight).sum() / len(tb)


def _add_at(resid: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """resid with ``vec`` added at (rows[i], cols[i]) for every i where cols[i] >= 0 (out of place)."""
    ok = (cols >= 0) & (cols < resid.shape[1])
    delta = torch.zeros_like(resid)
    delta[rows[ok], cols[ok]] = vec.to(resid.dtype)
    return resid + delta


def fast_path_unsupported_reason(model) -> str | None:
    """Why the prefix-cached path cannot run on ``model`` (None when it can)."""
    if model.cfg.n_key_value_heads is not None and model.cfg.ungroup_grouped_query_attention:
        return "TransformerLens's KV cache does not support cfg.ungroup_grouped_query_attention"
    return None


class NaiveObjective:
    """Full forward with theta added through :mod:`tvlens.interventions`: the reference implementation."""

    def __init__(self, model, tb: TargetBatch, sites: Sequence[Site], out_of_range: OutOfRange = "error") -> None:
        self.model, self.tb, self.sites, self.out_of_range = model, tb, tuple(sites), out_of_range
        tb.site_columns(self.sites, out_of_range)  # fail here, not mid-training, on a site a prompt lacks
        self.targets = TargetIndex(tb)

    def target_logits(self, theta: Float[torch.Tensor, "site d_model"], idx: torch.Tensor | None = None):
        from tvlens._hooks import AddAt, Span, intervene

        t = self.targets.gather(idx)
        tb = self.tb
        pick = (lambda x: x) if idx is None else (lambda x: x[idx])  # noqa: E731
        # the prompt spans are explicit: the teacher-forced answer tokens after them are real tokens too
        edit = AddAt(self.sites, theta, out_of_range=self.out_of_range)
        with intervene(self.model, edit, span=Span(pick(tb.prompt_first), pick(tb.prompt_last))):
            logits = self.model(pick(tb.tokens), attention_mask=pick(tb.attention_mask))  # [batch, pos, vocab]
        return logits[t.tgt_row, t.tgt_col], t

    def loss(self, theta, idx=None):
        logits, t = self.target_logits(theta, idx)
        return weighted_nll(logits, t), logits, t


class FastObjective:
    """Prefix-cached objective: the unaffected prefix is computed once, each step runs the rest.

    ``lean=None`` (default) runs the suffix through ``tvlens.ltv._lean.LeanStack`` when the
    architecture is covered, else through TransformerLens's blocks; ``lean=False`` forces the
    blocks (both are tested against ``NaiveObjective``). ``lean_reason`` says why lean is off.
    """

    def __init__(self, model, tb: TargetBatch, sites: Sequence[Site], out_of_range: OutOfRange = "error", *,
                 prepare_batch_size: int = 64, lean: bool | None = None) -> None:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        from tvlens.ltv._lean import LeanStack, lean_unsupported_reason

        if reason := fast_path_unsupported_reason(model):
            raise ConfigError(f"the fast path cannot run on this model ({reason}); use the naive path: LTVConfig(fast=False)")
        self.model, self.tb, self.sites = model, tb, tuple(sites)
        self.targets = TargetIndex(tb)
        self.l0 = min(s.layer for s in self.sites)
        cols = tb.site_columns(self.sites, out_of_range)  # [site, batch], -1 = absent
        present = cols[cols >= 0]
        # earliest affected column; with no site present anywhere only the last columns matter
        self.c0 = int(present.min()) if len(present) else int(tb.prompt_last.min())
        self.cols = torch.where(cols >= 0, cols - self.c0, -1)  # columns within the suffix
        keys: list[list[torch.Tensor]] = [[] for _ in range(model.cfg.n_layers)]
        values: list[list[torch.Tensor]] = [[] for _ in range(model.cfg.n_layers)]
        resid = []
        with torch.no_grad():
            for start in range(0, len(tb), prepare_batch_size):
                sl = slice(start, start + prepare_batch_size)
                toks, mask = tb.tokens[sl], tb.attention_mask[sl]
                cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, toks.shape[0])
                if self.c0 > 0:
                    model(toks[:, : self.c0], past_kv_cache=cache, attention_mask=mask[:, : self.c0], return_type=None)
                cache.freeze()
                # residual at layer l0 for the suffix columns, attending to the cached prefix
                resid.append(model(toks[:, self.c0 :], past_kv_cache=cache, attention_mask=mask[:, self.c0 :], stop_at_layer=self.l0))
                for layer in range(self.l0, model.cfg.n_layers):
                    keys[layer].append(cache.entries[layer].past_keys)
                    values[layer].append(cache.entries[layer].past_values)
        # per layer [batch, c0, n_kv_heads, d_head]; layers below l0 are not needed
        self.keys = [torch.cat(k) if layer >= self.l0 else None for layer, k in enumerate(keys)]
        self.values = [torch.cat(v) if layer >= self.l0 else None for layer, v in enumerate(values)]
        self.resid = torch.cat(resid)  # [batch, suffix, d_model]
        self.shortformer = None  # shortformer models add positions to every block's queries and keys
        if model.cfg.positional_embedding_type == "shortformer":
            with torch.no_grad():
                self.shortformer = model.pos_embed(tb.tokens[:, self.c0 :], self.c0, tb.attention_mask)
        self.lean_reason = lean_unsupported_reason(model, range(self.l0, model.cfg.n_layers)) if lean is not False else "lean=False"
        if lean and self.lean_reason:
            raise ConfigError(f"the lean fast path does not cover this model ({self.lean_reason}); pass lean=None (auto) or lean=False")
        self.lean = None if self.lean_reason else LeanStack(model, self.l0, self.c0, tb.attention_mask, self.keys, self.values)
        if self.lean is not None:
            self.keys = self.values = None  # the lean stack holds them (rotary keys pre-rotated)

    def _cache(self, idx: torch.Tensor | None):
        """A frozen KV cache of the prefix for rows ``idx`` (views when idx is None or contiguous)."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

        if idx is None:
            pick = lambda t: t  # noqa: E731
        elif len(idx) and bool((idx[1:] - idx[:-1] == 1).all()):
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            pick = lambda t: t[lo:hi]  # noqa: E731  (a view: no copy)
        else:
            pick = lambda t: t[idx]  # noqa: E731
        mask = pick(self.tb.attention_mask)
        # layers below l0 are never run by the fast path: their entries stay empty
        entries = [
            TransformerLensKeyValueCacheEntry(pick(k), pick(v), frozen=True) if layer >= self.l0 else None
            for layer, (k, v) in enumerate(zip(self.keys, self.values))
        ]
        return TransformerLensKeyValueCache(entries, mask[:, : self.c0], frozen=True), mask

    def target_logits(self, theta: Float[torch.Tensor, "site d_model"], idx: torch.Tensor | None = None):
        model = self.model
        t = self.targets.gather(idx)
        cols = self.cols if idx is None else self.cols[:, idx]
        resid = self.resid if idx is None else self.resid[idx]
        rows = torch.arange(len(t))  # a minibatch may repeat rows (small splits, large epochs)
        if self.lean is None:
            cache, mask = self._cache(idx)
            pos = None if self.shortformer is None else self.shortformer if idx is None else self.shortformer[idx]
        for layer in range(self.l0, model.cfg.n_layers):
            for i, s in enumerate(self.sites):
                if s.layer == layer:
                    resid = _add_at(resid, rows, cols[i], theta[i])
            if self.lean is not None:
                resid = self.lean.block(layer, resid, idx)
            else:
                resid = model.blocks[layer](resid, past_kv_cache_entry=cache[layer], attention_mask=mask, shortformer_pos_embed=pos)
        resid = resid[t.tgt_row, t.tgt_col - self.c0]  # [target, d_model]
        ln_final = getattr(model, "ln_final", None)  # absent when cfg.normalization_type is None
        if ln_final is not None:
            resid = norm(ln_final, resid) if self.lean is not None else ln_final(resid[:, None])[:, 0]
        # same map as model.unembed, without its per-call contiguous copy of W_U (~150 MB for GPT-2)
        logits = resid @ model.W_U + model.b_U  # [target, d_vocab]
        return apply_softcap(logits, model.cfg.output_logits_soft_cap), t

    def loss(self, theta, idx=None):
        logits, t = self.target_logits(theta, idx)
        return weighted_nll(logits, t), logits, t


def make_objective(model, tb: TargetBatch, sites: Sequence[Site], *, fast: bool = True, out_of_range: OutOfRange = "error"):
    """The fast objective, or the naive one when ``fast`` is False or the model rules the fast path out."""
    if fast and (reason := fast_path_unsupported_reason(model)):
        log.warning("training on the naive path: %s", reason)
        fast = False
    return FastObjective(model, tb, sites, out_of_range) if fast else NaiveObjective(model, tb, sites, out_of_range)
