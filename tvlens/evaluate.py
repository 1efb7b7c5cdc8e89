"""Batched evaluation: next-token accuracy of a model on a prompt set, with optional intervention.

Accuracy is the paper's metric: the argmax over the FULL vocabulary at each prompt's last
token must equal the first token of the gold answer. For classification tasks the accuracy
restricted to the label words is reported too.

>>> import tvlens as tv
>>> model = tv.load_model("toy")
>>> splits = tv.make_splits(tv.tasks.get("toy/antonym"))
>>> res = tv.evaluate(model, tv.make_prompts(splits, "test", k=8))
>>> res.accuracy > 0.9
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tvlens._engine import final_logits as final_logits  # re-exported: the one head on last-token residuals
from tvlens._hooks import Edit
from tvlens._result import Result
from tvlens.prompts import PaddingSide, PromptBatch, PromptSet

Intervention = Callable[[PromptBatch], AbstractContextManager] | Edit | Sequence[Edit]
"""Edits of :mod:`tvlens.interventions` (applied to each sub-batch with its prompt spans),
:func:`tvlens.steering` (its edit), or a callable that, given a (sub)batch, returns a context
manager inside which the model runs intervened. Edits run on :mod:`tvlens._engine` (only the
columns from the first edited one); a context manager gets a full forward (logged)."""


def _edits(intervention: Intervention | None) -> list[Edit] | None:
    """The edits of ``intervention`` (None: a context manager the engine cannot see into)."""
    from tvlens.steer import steering

    if intervention is None:
        return []
    if isinstance(intervention, Edit):
        return [intervention]
    if isinstance(intervention, (tuple, list)):
        return list(intervention)
    if isinstance(intervention, steering):
        return [intervention.edit]
    return None


@dataclass(frozen=True, eq=False)
class EvalResult(Result):
    """Per-prompt predictions and the accuracies of one evaluation."""

    task: str
    k: int
    split: str
    accuracy: float  # full-vocabulary argmax == first gold token
    label_accuracy: float | None  # argmax over the label words only (classification), else None
    predicted: Int[torch.Tensor, " batch"]  # full-vocabulary argmax token ids
    gold: Int[torch.Tensor, " batch"]  # first gold token ids
    gold_logprob: Float[torch.Tensor, " batch"]  # log p(first gold token)
    prompts: tuple[str, ...]
    label: str = ""  # free text naming the condition, e.g. "zero-shot" or "ltv"

    @property
    def n(self) -> int:
        return len(self.prompts)

    @property
    def mean_logprob(self) -> float:
        return float(self.gold_logprob.mean())

    @property
    def correct(self) -> int:
        return int((self.predicted == self.gold).sum())

    @property
    def ci95(self) -> tuple[float, float]:
        """95% Wilson interval of :attr:`accuracy` over the :attr:`n` prompts (see :mod:`tvlens.stats`)."""
        from tvlens.stats import wilson_interval

        return wilson_interval(self.correct, self.n)

    @property
    def ci_low(self) -> float:
        return self.ci95[0]

    @property
    def ci_high(self) -> float:
        return self.ci95[1]

    def summary(self) -> dict:
        return {
            "task": self.task,
            "condition": self.label,
            "k": self.k,
            "split": self.split,
            "n": self.n,
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "label_accuracy": self.label_accuracy,
            "mean_logprob": self.mean_logprob,
        }

    def to_frame(self, model=None):
        """One row per prompt (token strings decoded when ``model`` is given)."""
        import pandas as pd

        dec = (lambda ids: [model.tokenizer.decode([i]) for i in ids.tolist()]) if model is not None else (lambda ids: ids.tolist())
        return pd.DataFrame(
            {
                "prompt": self.prompts,
                "gold": dec(self.gold),
                "predicted": dec(self.predicted),
                "correct": (self.predicted == self.gold).tolist(),
                "gold_logprob": self.gold_logprob.tolist(),
            }
        )

    def plot(self):
        """Histogram of log p(gold first token), correct and wrong predictions stacked."""
        import plotly.express as px

        df = self.to_frame()
        return px.histogram(df, x="gold_logprob", color="correct", barmode="stack",
                            title=f"{self.task} {self.label}: accuracy {self.accuracy:.3f} (n={self.n})")

    def __repr__(self) -> str:
        lab = f", label_acc={self.label_accuracy:.3f}" if self.label_accuracy is not None else ""
        cond = f" {self.label}" if self.label else ""
        lo, hi = self.ci95
        return f"EvalResult({self.task!r}{cond} k={self.k} {self.split} n={self.n}: acc={self.accuracy:.3f} [95% CI {lo:.2f}-{hi:.2f}]{lab})"


def conditions_logits(
    model,
    batch: PromptBatch,
    interventions: Sequence[Intervention | None],
    *,
    batch_size: int = 64,
) -> list[Float[torch.Tensor, "batch d_vocab"]]:
    """Logits (float32) at each prompt's last real token under each of ``interventions`` (no grad).

    Each sub-batch of ``batch_size`` prompts gets one engine prefix (the clean keys and values of
    every column before the first one any intervention edits), shared by every intervention: each
    runs only the remaining columns from its lowest edited layer. An intervention given as a
    context manager (a callable of the sub-batch) runs a full forward inside it.
    """
    from tvlens import _engine as engine

    parsed = [_edits(iv) for iv in interventions]
    seen = [e for es in parsed if es and engine.lowest_layer(model, es) is not None for e in es]
    out: list[list[torch.Tensor]] = [[] for _ in interventions]
    with torch.no_grad():
        for sub in batch.split(batch_size):
            pre = None
            for j, (iv, es) in enumerate(zip(interventions, parsed)):
                if es is None:
                    with iv(sub):
                        last = engine.run(engine.full_width(model, sub, "an intervention given as a context manager")).last()
                elif len(interventions) == 1:  # one condition: its edits are the prefix's base, no second run
                    last = engine.prefix(model, sub, positions=(-1,), layer=model.cfg.n_layers, base=es).final()
                else:
                    if pre is None:
                        pre = engine.prefix(model, sub, positions=(-1,), layer=model.cfg.n_layers, edits=seen)
                    low = engine.lowest_layer(model, es)
                    last = engine.run(pre, es, start=pre.l0 if low is None else low).last()
                out[j].append(final_logits(model, last).float())
    return [torch.cat(o) for o in out]


def last_token_logits(
    model,
    batch: PromptBatch,
    *,
    intervention: Intervention | None = None,
    batch_size: int = 64,
) -> Float[torch.Tensor, "batch d_vocab"]:
    """Logits at each prompt's last real token, computed in sub-batches on the engine (no grad)."""
    return conditions_logits(model, batch, [intervention], batch_size=batch_size)[0]


def evaluate(
    model,
    prompts: PromptSet,
    *,
    intervention: Intervention | None = None,
    batch_size: int = 64,
    padding_side: PaddingSide = "left",
    label: str = "",
) -> EvalResult:
    """Accuracy of ``model`` on ``prompts`` (optionally with ``intervention``)."""
    return evaluate_conditions(model, prompts, {label: intervention}, batch_size=batch_size, padding_side=padding_side)[label]


def evaluate_conditions(
    model,
    prompts: PromptSet,
    interventions: Mapping[str, Intervention | None],
    *,
    batch_size: int = 64,
    padding_side: PaddingSide = "left",
) -> dict[str, EvalResult]:
    """:func:`evaluate` under each of ``interventions`` (label -> intervention) on the same prompts.

    The prompts' unedited prefix is computed once per sub-batch and shared by every condition
    (see :func:`conditions_logits`): evaluating, say, one vector per layer costs one forward
    pass plus a few columns per condition.
    """
    from tvlens._validate import check_int

    check_int("evaluate", "batch_size", batch_size, min=1)
    for iv in interventions.values():
        if getattr(iv, "vector", None) is not None:
            iv.vector.check_task(prompts.task if prompts.task is not None else "")
    batch = prompts.tokenize(model, padding_side=padding_side)
    logits = conditions_logits(model, batch, list(interventions.values()), batch_size=batch_size)
    return {lab: _result(prompts, batch, lg, lab) for lab, lg in zip(interventions, logits)}


def _result(prompts: PromptSet, batch: PromptBatch, logits: Float[torch.Tensor, "batch d_vocab"], label: str) -> EvalResult:
    logprobs = logits.log_softmax(-1)
    pred = logits.argmax(-1)
    gold = batch.answer_ids
    label_acc = None
    if batch.label_ids is not None:
        restricted = batch.label_ids[logits[:, batch.label_ids].argmax(-1)]
        label_acc = float((restricted == gold).float().mean())
    return EvalResult(
        task=prompts.task.name,
        k=prompts.k,
        split=prompts.split,
        accuracy=float((pred == gold).float().mean()),
        label_accuracy=label_acc,
        predicted=pred,
        gold=gold,
        gold_logprob=logprobs[torch.arange(len(gold)), gold],
        prompts=tuple(prompts.texts),
        label=label or ("zero-shot" if prompts.k == 0 else f"{prompts.k}-shot"),
    )


@dataclass(frozen=True, eq=False)
class BaselineTable(Result):
    """Zero-shot and k-shot accuracies for several tasks (rows) and shot counts (columns)."""

    results: tuple[EvalResult, ...]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([r.summary() for r in self.results])

    def accuracy(self, task: str, k: int) -> float:
        for r in self.results:
            if r.task == task and r.k == k:
                return r.accuracy
        raise KeyError(f"no result for task {task!r} at k={k}")

    def plot(self):
        import plotly.express as px

        from tvlens._plot import integer_axis

        df = self.to_frame()
        fig = px.line(df, x="k", y="accuracy", color="task", markers=True, title="Accuracy vs number of demonstrations")
        fig.update_layout(xaxis_title="demonstrations k", yaxis_range=[0, 1.05])
        return integer_axis(fig, "x", df["k"])  # k is a count: a tick per measured k, none between

    def __repr__(self) -> str:
        return f"BaselineTable({len({r.task for r in self.results})} tasks, k={sorted({r.k for r in self.results})})"


def icl_baselines(
    model,
    tasks: Sequence,
    *,
    shots: Sequence[int] = (0, 1, 2, 4, 8),
    split: str = "test",
    seed: int = 0,
    batch_size: int = 64,
) -> BaselineTable:
    """Zero-shot (k=0) and k-shot accuracy on held-out queries for each task."""
    from tvlens.prompts import make_prompts, make_splits

    from tvlens.tasks import get as get_task

    results = []
    for task in tasks:
        task = get_task(task) if isinstance(task, str) else task
        splits = make_splits(task, seed=seed)
        for k in shots:
            results.append(evaluate(model, make_prompts(splits, split, k=k, seed=seed), batch_size=batch_size))
    return BaselineTable(tuple(results))
