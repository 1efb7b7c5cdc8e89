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

from tvlens.errors import ConfigError, PromptError
from tvlens.prompts import PromptBatch, PromptSet, label_token_ids
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

    def prompt_batch(self) -> PromptBatch:
        """These rows as the engine's :class:`~tvlens.prompts.PromptBatch` (prompt spans explicit)."""
        right = bool((self.attention_mask[:, -1] == 0).any())
        return _ForcedBatch(self.tokens, self.attention_mask, self.prompt_last, self.first_target,
                            tuple((int(t),) for t in self.first_target), "right" if right else "left",
                            prompt_first=self.prompt_first)


@dataclass(frozen=True)
class _ForcedBatch(PromptBatch):
    """A prompt batch whose rows go on after each prompt (teacher-forced answer tokens): its prompt
    spans cannot be read off the attention mask, so they are given."""

    prompt_first: Int[torch.Tensor, " batch"] | None = None

    @property
    def first_index(self) -> Int[torch.Tensor, " batch"]:
        return self.prompt_first

    def __getitem__(self, index: slice) -> _ForcedBatch:
        return _ForcedBatch(self.tokens[index], self.attention_mask[index], self.last_index[index], self.answer_ids[index],
                            self.answer_tokens[index], self.padding_side, self.label_ids, self.prompt_first[index])


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


def fast_path_unsupported_reason(model) -> str | None:
    """Why the prefix-cached path cannot run on ``model`` (None when it can): the engine's cache cannot serve it."""
    from tvlens._engine import cache_unsupported_reason

    return cache_unsupported_reason(model)


class NaiveObjective:
    """Full forward (:func:`tvlens._engine.forward_logits`) with theta added at its sites: the reference implementation."""

    def __init__(self, model, tb: TargetBatch, sites: Sequence[Site], out_of_range: OutOfRange = "error") -> None:
        self.model, self.tb, self.sites, self.out_of_range = model, tb, tuple(sites), out_of_range
        tb.site_columns(self.sites, out_of_range)  # fail here, not mid-training, on a site a prompt lacks
        self.targets = TargetIndex(tb)

    def target_logits(self, theta: Float[torch.Tensor, "site d_model"], idx: torch.Tensor | None = None):
        from tvlens import _engine as engine
        from tvlens._hooks import AddAt, Span

        t = self.targets.gather(idx)
        tb = self.tb
        pick = (lambda x: x) if idx is None else (lambda x: x[idx])  # noqa: E731
        # the prompt spans are explicit: the teacher-forced answer tokens after them are real tokens too
        edit = AddAt(self.sites, theta, out_of_range=self.out_of_range)
        logits = engine.forward_logits(self.model, pick(tb.tokens), pick(tb.attention_mask), [edit],
                                       span=Span(pick(tb.prompt_first), pick(tb.prompt_last)))  # [batch, pos, vocab]
        return logits[t.tgt_row, t.tgt_col], t

    def loss(self, theta, idx=None):
        logits, t = self.target_logits(theta, idx)
        return weighted_nll(logits, t), logits, t


class FastObjective:
    """Prefix-cached objective on :mod:`tvlens._engine`: the unaffected prefix is computed once, each step runs the rest.

    The engine's prefix holds the keys and values of every column before ``c0`` (the earliest
    injected column) and the residual stream before layer ``l0`` (the lowest injected layer) of
    the others; a step is one differentiable suffix run from ``l0`` with theta added at its sites,
    read at the teacher-forced target columns. ``lean=None`` (default) runs the suffix through the
    engine's shared-prefix lean blocks (:mod:`tvlens._engine_lean`) when the architecture is
    covered, else through TransformerLens's blocks; ``lean=False`` forces the blocks (both are
    tested against ``NaiveObjective``). ``lean_reason`` says why lean is off.
    """

    def __init__(self, model, tb: TargetBatch, sites: Sequence[Site], out_of_range: OutOfRange = "error", *,
                 prepare_batch_size: int = 64, lean: bool | None = None) -> None:
        from tvlens import _engine as engine
        from tvlens._engine_lean import lean_hooks_reason

        if reason := fast_path_unsupported_reason(model):
            raise ConfigError(f"the fast path cannot run on this model ({reason}); use the naive path: LTVConfig(fast=False)")
        self.model, self.tb, self.sites, self.out_of_range = model, tb, tuple(sites), out_of_range
        self.targets = TargetIndex(tb)
        self.l0 = min(s.layer for s in self.sites)
        tb.site_columns(self.sites, out_of_range)  # fail here, not mid-training, on a site a prompt lacks
        probe = self._edit(torch.zeros(len(self.sites), model.cfg.d_model))
        names = probe.hook_names(model)
        self.lean_reason = lean_hooks_reason(model, names, self.l0) if lean is not False else "lean=False"
        if lean and self.lean_reason:
            raise ConfigError(f"the lean fast path does not cover this model ({self.lean_reason}); pass lean=None (auto) or lean=False")
        self.pre = engine.prefix(model, tb.prompt_batch(), positions=(), layer=self.l0, edits=[probe],
                                 prepare_rows=prepare_batch_size, lean=lean is not False)
        self.c0 = self.pre.c0  # first column a step computes
        self.lean = self.pre.lean_stack(names, self.l0)  # None: TransformerLens's blocks

    def _edit(self, theta: Float[torch.Tensor, "site d_model"]):
        from tvlens._hooks import AddAt

        return AddAt(self.sites, theta, out_of_range=self.out_of_range)

    def target_logits(self, theta: Float[torch.Tensor, "site d_model"], idx: torch.Tensor | None = None):
        from tvlens import _engine as engine

        t = self.targets.gather(idx)  # a minibatch may repeat rows (small splits, large epochs)
        out = engine.run(self.pre, [self._edit(theta)], start=self.l0, rows=idx)
        resid = out.resid[t.tgt_row, t.tgt_col - self.c0]  # [target, d_model]
        return engine.head_logits(self.model, resid), t

    def loss(self, theta, idx=None):
        logits, t = self.target_logits(theta, idx)
        return weighted_nll(logits, t), logits, t


def make_objective(model, tb: TargetBatch, sites: Sequence[Site], *, fast: bool = True, out_of_range: OutOfRange = "error"):
    """The fast objective, or the naive one when ``fast`` is False or the model rules the fast path out."""
    if fast and (reason := fast_path_unsupported_reason(model)):
        log.warning("training on the naive path: %s", reason)
        fast = False
    return FastObjective(model, tb, sites, out_of_range) if fast else NaiveObjective(model, tb, sites, out_of_range)
