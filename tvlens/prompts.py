"""Seeded, reproducible prompt sets: splits, zero-shot and k-shot prompts, batched tokenisation.

Context:
    Every number tvlens reports is measured on prompts built here. A task's examples are split
    once (per seed) into a *demonstration pool* and disjoint *train / validation / test* query
    pools; k-shot prompts draw their demonstrations from the demonstration pool only, so no
    query ever appears as its own demonstration and test queries are never trained on.

>>> import tvlens as tv
>>> splits = tv.make_splits(tv.tasks.get("toy/antonym"), seed=0)
>>> ps = tv.make_prompts(splits, "test", k=2, seed=0)
>>> len(ps) == len(splits.test)
True
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Int

from tvlens._validate import no_type_check
from tvlens.errors import LabelTokenError, PromptError
from tvlens.tasks._task import Example, Task

log = logging.getLogger(__name__)

Split = Literal["demo", "train", "val", "test"]
PaddingSide = Literal["left", "right"]


@no_type_check  # validates its own fields (tvlens._validate.no_type_check)
@dataclass(frozen=True)
class SplitConfig:
    """How a task's examples are divided. Fractions of the (balanced) pool, then capped."""

    demo_frac: float = 0.25  # share of examples kept as the demonstration pool
    train_frac: float = 0.35  # share used as training queries (for learned vectors)
    val_frac: float = 0.15  # share used as validation queries (early stopping)
    max_demo: int = 500  # caps, as in the paper: 600 train / 400 validation queries
    max_train: int = 600
    max_val: int = 400
    max_test: int = 500
    balance: bool = True  # classification: equal examples per label before splitting

    def __post_init__(self) -> None:
        from tvlens._validate import check_bool, check_float, check_int

        for name in ("demo_frac", "train_frac", "val_frac"):
            check_float("SplitConfig", name, getattr(self, name), min=0, max=1, min_exclusive=True)
        for name in ("max_demo", "max_train", "max_val", "max_test"):
            check_int("SplitConfig", name, getattr(self, name), min=1)
        check_bool("SplitConfig", "balance", self.balance)
        fr = (self.demo_frac, self.train_frac, self.val_frac)
        if any(f <= 0 for f in fr) or sum(fr) >= 1:
            raise PromptError(f"split fractions {fr} must be positive and sum to less than 1 (the rest is test)")


@dataclass(frozen=True)
class TaskSplits:
    """A task's examples divided into a demonstration pool and disjoint query splits."""

    task: Task
    demo: tuple[Example, ...]
    train: tuple[Example, ...]
    val: tuple[Example, ...]
    test: tuple[Example, ...]
    seed: int

    def __getitem__(self, split: Split) -> tuple[Example, ...]:
        if split not in ("demo", "train", "val", "test"):
            raise PromptError(f"unknown split {split!r}; use 'demo', 'train', 'val' or 'test'")
        return getattr(self, split)

    def __repr__(self) -> str:
        return (
            f"TaskSplits({self.task.name!r}, demo={len(self.demo)}, train={len(self.train)}, "
            f"val={len(self.val)}, test={len(self.test)}, seed={self.seed})"
        )


def make_splits(task: Task, *, seed: int = 0, config: SplitConfig = SplitConfig()) -> TaskSplits:
    """Split ``task`` into demonstration / train / val / test pools (seeded, reproducible)."""
    rng = random.Random(f"tvlens-splits-{task.base_name}-{seed}")
    examples = unique_examples(task)
    n_unique = len(examples)
    if task.kind == "classification" and config.balance and task.label_words:
        by_label = {lab: [e for e in examples if e.output == lab] for lab in task.label_words}
        n = min(len(v) for v in by_label.values())
        if n == 0:
            empty = [lab for lab, v in by_label.items() if not v]
            raise PromptError(f"task {task.name!r} has no examples of label(s) {empty}; pass SplitConfig(balance=False)")
        examples = []
        for lab in task.label_words:
            examples += rng.sample(by_label[lab], n)
    rng.shuffle(examples)
    total = len(examples)
    n_demo = min(config.max_demo, int(total * config.demo_frac))
    n_train = min(config.max_train, int(total * config.train_frac))
    n_val = min(config.max_val, int(total * config.val_frac))
    n_test = min(config.max_test, total - n_demo - n_train - n_val)
    if min(n_demo, n_train, n_val, n_test) < 1:
        raise PromptError(
            f"task {task.name!r} has {total} usable examples"
            + (f" ({len(task.examples)} before dropping duplicates and contradictory inputs)" if len(task.examples) != n_unique else "")
            + f", too few to split into demo/train/val/test ({n_demo}/{n_train}/{n_val}/{n_test}); "
            "give it at least ~10 examples with distinct inputs"
        )
    a, b, c = n_demo, n_demo + n_train, n_demo + n_train + n_val
    return TaskSplits(task, tuple(examples[:a]), tuple(examples[a:b]), tuple(examples[b:c]), tuple(examples[c : c + n_test]), seed)


def unique_examples(task: Task) -> list[Example]:
    """``task``'s examples with exact duplicates dropped and contradictory inputs removed, in order.

    Splits are disjoint *by input*: a query repeated in the data must not land in both train and
    test. Exact duplicates are kept once (logged). An input given two different outputs has no
    single gold answer; its examples are dropped with a :class:`~tvlens.errors.TvlensWarning`
    (tasks built with ``from_pairs`` / ``from_file`` refuse such data outright).
    """
    outputs: dict[tuple, set[str]] = {}
    for e in task.examples:
        outputs.setdefault(e.fields, set()).add(e.output)
    conflicting = {f for f, outs in outputs.items() if len(outs) > 1}
    seen: set[tuple] = set()
    kept: list[Example] = []
    n_dup = 0
    for e in task.examples:
        if e.fields in conflicting:
            continue
        if e.fields in seen:
            n_dup += 1
            continue
        seen.add(e.fields)
        kept.append(e)
    if n_dup:
        log.warning("task %r: dropped %d duplicate example(s) before splitting, %d unique remain", task.name, n_dup, len(kept))
    if conflicting:
        from tvlens.errors import warn

        some = sorted(conflicting)[:3]
        warn(
            f"task {task.name!r}: {len(conflicting)} input(s) have several different outputs (e.g. "
            + "; ".join(f"{dict(f)} -> {sorted(outputs[f])}" for f in some)
            + f"); their {sum(e.fields in conflicting for e in task.examples)} examples are left out of every split. "
            "Fix the data so each input has one answer"
        )
    return kept


@dataclass(frozen=True)
class PromptSet:
    """Prompts for one task: a query per prompt with its k demonstrations. Text only.

    Tokenise with :meth:`tokenize` (for a given model); show with :meth:`to_frame` or ``str``.
    """

    task: Task
    split: str  # which query split the queries come from
    k: int  # demonstrations per prompt (0 = zero-shot)
    queries: tuple[Example, ...]
    demos: tuple[tuple[Example, ...], ...]  # per prompt, its k demonstrations
    seed: int

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def texts(self) -> list[str]:
        return [self.task.prompt_text(q, d) for q, d in zip(self.queries, self.demos)]

    @property
    def answers(self) -> list[str]:
        """Gold answers, as the text the model should continue with (answer prefix included)."""
        return [self.task.answer_prefix + q.output for q in self.queries]

    def subset(self, index: Sequence[int] | slice) -> PromptSet:
        idx = range(len(self))[index] if isinstance(index, slice) else index
        return PromptSet(self.task, self.split, self.k, tuple(self.queries[i] for i in idx), tuple(self.demos[i] for i in idx), self.seed)

    def tokenize(self, model, *, padding_side: PaddingSide = "left") -> PromptBatch:
        """Tokenise every prompt for ``model`` (BOS prepended), padded on ``padding_side``."""
        return tokenize_prompts(model, self.texts, self.answers, padding_side=padding_side, task=self.task)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(
            {"prompt": self.texts, "answer": [q.output for q in self.queries], "k": self.k, "split": self.split}
        )

    def __str__(self) -> str:
        lines = [f"{self.task.name} [{self.split}, k={self.k}, {len(self)} prompts]"]
        for text, q in list(zip(self.texts, self.queries))[:5]:
            lines.append(f"  {text!r} => {q.output!r}")
        if len(self) > 5:
            lines.append(f"  ... ({len(self) - 5} more)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"PromptSet({self.task.name!r}, split={self.split!r}, k={self.k}, n={len(self)}, seed={self.seed})"


@no_type_check
def make_prompts(
    splits: TaskSplits,
    split: Split = "test",
    *,
    k: int = 0,
    seed: int = 0,
    n: int | None = None,
) -> PromptSet:
    """Prompts whose queries are the ``split`` pool (or its first ``n``) with ``k`` random demos each.

    Demonstrations come from the demonstration pool, drawn without replacement within a prompt,
    seeded by ``seed`` (same seed -> same prompts).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise PromptError(f"k must be an integer >= 0 (demonstrations per prompt), got {k!r}")
    if split == "demo":
        raise PromptError("the demonstration pool is not a query split; use 'train', 'val' or 'test'")
    if k > len(splits.demo):
        raise PromptError(f"k={k} demonstrations asked but the demonstration pool of {splits.task.name!r} has {len(splits.demo)}")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PromptError(f"n must be a positive integer (how many queries) or None for the whole split, got {n!r}")
    queries = splits[split][:n] if n is not None else splits[split]
    rng = random.Random(f"tvlens-prompts-{splits.task.base_name}-{split}-{k}-{seed}-{splits.seed}")
    demos = tuple(tuple(rng.sample(splits.demo, k)) for _ in queries)
    return PromptSet(splits.task, split, k, tuple(queries), demos, seed)


@dataclass(frozen=True)
class PromptBatch:
    """Tokenised prompts: padded tokens, attention mask, each prompt's last index, answer tokens."""

    tokens: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"]  # 1 = real token, 0 = padding
    last_index: Int[torch.Tensor, " batch"]  # column of each prompt's last real token
    answer_ids: Int[torch.Tensor, " batch"]  # first token of each gold answer
    answer_tokens: tuple[tuple[int, ...], ...]  # every token of each gold answer
    padding_side: PaddingSide
    label_ids: Int[torch.Tensor, " label"] | None = None  # classification: first token per label word

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def lengths(self) -> Int[torch.Tensor, " batch"]:
        return self.attention_mask.sum(-1)

    @property
    def first_index(self) -> Int[torch.Tensor, " batch"]:
        """Column of each prompt's first real token (its BOS)."""
        return self.last_index - self.lengths + 1

    def real_mask(self) -> Bool[torch.Tensor, "batch pos"]:
        return self.attention_mask.bool()

    def __getitem__(self, index: slice) -> PromptBatch:
        """Rows of the batch (padding columns are kept, so indices stay valid)."""
        if not isinstance(index, slice):
            raise TypeError("index a PromptBatch with a slice, e.g. batch[0:16]")
        return PromptBatch(
            self.tokens[index],
            self.attention_mask[index],
            self.last_index[index],
            self.answer_ids[index],
            self.answer_tokens[index],
            self.padding_side,
            self.label_ids,
        )

    def split(self, batch_size: int) -> list[PromptBatch]:
        return [self[i : i + batch_size] for i in range(0, len(self), batch_size)]


def _encode(model, text: str, *, bos: bool) -> list[int]:
    return model.to_tokens(text, prepend_bos=bos, padding_side="right", truncate=False)[0].tolist() if text else []


def label_token_ids(model, task: Task) -> torch.Tensor:
    """The single token id of each label word (with the task's answer prefix)."""
    if not task.label_words:
        raise LabelTokenError(f"task {task.name!r} has no label words")
    ids = []
    for lab in task.label_words:
        toks = _encode(model, task.answer_prefix + lab, bos=False)
        if len(toks) != 1:
            pieces = model.to_str_tokens(task.answer_prefix + lab, prepend_bos=False)
            raise LabelTokenError(
                f"task {task.name!r}: label word {lab!r} is {len(toks)} tokens on this model {pieces}; "
                "classification needs single-token labels: choose other label_words or make the task 'generation'"
            )
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise LabelTokenError(f"task {task.name!r}: label words {task.label_words} share a token on this model")
    return torch.tensor(ids)


def tokenize_prompts(
    model,
    texts: Sequence[str],
    answers: Sequence[str],
    *,
    padding_side: PaddingSide = "left",
    task: Task | None = None,
) -> PromptBatch:
    """Tokenise prompt ``texts`` (BOS prepended) and their gold ``answers`` (no BOS)."""
    if padding_side not in ("left", "right"):
        raise PromptError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if model.tokenizer is None:
        raise PromptError("this model has no tokenizer; load it with one (tv.load_model on a directory with tokenizer files)")
    if len(texts) != len(answers) or not texts:
        raise PromptError(f"need one answer per prompt and at least one prompt (got {len(texts)} prompts, {len(answers)} answers)")
    label_ids = label_token_ids(model, task) if task is not None and task.kind == "classification" else None
    seqs = [_encode(model, t, bos=True) for t in texts]
    ans = [tuple(_encode(model, a, bos=False)) for a in answers]
    if any(len(a) == 0 for a in ans):
        raise PromptError("an answer tokenises to nothing; every example needs a non-empty output")
    _warn_unknown_tokens(model, seqs, ans, task)
    width = max(len(s) for s in seqs)
    if width > model.cfg.n_ctx:
        raise PromptError(f"a prompt is {width} tokens but the model's context is {model.cfg.n_ctx}; use fewer shots")
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    last = torch.empty(len(seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        start = width - len(s) if padding_side == "left" else 0
        tokens[i, start : start + len(s)] = torch.tensor(s)
        mask[i, start : start + len(s)] = 1
        last[i] = start + len(s) - 1
    first = torch.tensor([a[0] for a in ans])
    return PromptBatch(tokens, mask, last, first, tuple(ans), padding_side, label_ids)


def _warn_unknown_tokens(model, seqs: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], task: Task | None) -> None:
    """Warn when words fell outside the vocabulary (word-level tokenizers such as the toy's).

    A :class:`~tvlens.errors.TvlensWarning` (shown in plain Python and notebooks), not only a log
    line: accuracy on such prompts is not meaningful.
    """
    tok = model.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    # byte-level BPE tokenizers (GPT-2's) call their end-of-text token "unk" but never emit it for a word
    if unk is None or unk in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
        return
    n_prompts = sum(unk in s for s in seqs)
    n_answers = sum(unk in a for a in answers)
    if n_prompts or n_answers:
        from tvlens.errors import warn

        name = task.name if task is not None else "these prompts"
        msg = (
            f"{n_prompts} of {len(seqs)} prompts and {n_answers} answers of {name} contain the unknown token "
            f"{model.tokenizer.unk_token!r}: the tokenizer lacks some of their words, so accuracy is not meaningful "
            "(the embedded toy model knows only its synthetic world's words: use a toy/ task with it, or load a real model)"
        )
        log.warning("%s", msg)
        warn(msg)
