"""Composition: does the sum of two task vectors solve the task that needs both?

Context:
    On a composed task (``tvlens.tasks._composed``: e.g. ``toy/capitalize+antonym``, word -> its
    antonym capitalized) :func:`composition` compares ``s * (a + b)`` for a few scales with
    zero-shot, ICL and each vector alone on the same zero-shot test queries, and counts how often
    the model gives task a's or task b's own answer instead: a sum that fails the composition
    usually performs one of the two tasks. Re-exported by :mod:`tvlens.analysis.geometry`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int

from tvlens._result import ConditionAccuracy
from tvlens._validate import no_type_check
from tvlens.analysis._vectors import _check_vectors, _eval, _task
from tvlens.errors import ConfigError
from tvlens.tasks._task import Task
from tvlens.vector import TaskVector

__all__ = ["Composition", "composition"]


# --- composition -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class Composition(ConditionAccuracy):
    """Accuracy on a composed task: zero-shot, ICL, each vector alone, their (scaled) sums.

    On the :class:`~tvlens._result.ConditionAccuracy` base: ``accuracy(c)``, ``interval(c)``,
    ``accuracies``, ``payload()``, ``text()``, ``summary()``; ``to_frame`` adds how often each
    condition answers as task a or task b instead.
    """

    task_a: str = ""
    task_b: str = ""
    cos_ab: float = math.nan  # cosine between the two vectors
    scales: tuple[float, ...] = ()  # the sum scales evaluated
    matches_a: Int[torch.Tensor, " condition"] | None = None  # predictions equal to task_a's own answer for the input (-1: unknown)
    matches_b: Int[torch.Tensor, " condition"] | None = None  # likewise for task_b
    queries: tuple[str, ...] = ()  # the test queries' inputs, in order
    predicted: Int[torch.Tensor, "condition batch"] | None = None  # full-vocabulary argmax per condition and query
    gold: Int[torch.Tensor, " batch"] | None = None  # first token of the composed answer

    def predictions(self, model=None):
        """One row per query: its input, the gold first token and each condition's prediction
        (decoded with ``model``'s tokenizer when given, else token ids)."""
        import pandas as pd

        if self.predicted is None:
            raise ConfigError("this Composition holds no per-query predictions (made by an older tvlens); rerun composition()")
        dec = (lambda ids: [model.tokenizer.decode([i]) for i in ids]) if model is not None else (lambda ids: list(ids))
        frame = {"query": list(self.queries), "gold": dec(self.gold.tolist())}
        frame.update({c: dec(self.predicted[i].tolist()) for i, c in enumerate(self.conditions)})
        return pd.DataFrame(frame)

    def at(self, condition: str) -> float:
        """Same as :meth:`accuracy`."""
        return self.accuracy(condition)

    @property
    def best_sum(self) -> str:
        sums = [c for c in self.conditions if "a+b" in c]
        return max(sums, key=self.accuracy)

    @property
    def sum_beats_each(self) -> bool:
        """The best sum's 95% interval lies above zero-shot's and each single vector's upper bound."""
        lo = self.interval(self.best_sum)[0]
        return all(lo > self.interval(c)[1] for c in ("zero-shot", "a", "b"))

    def to_frame(self):
        """The base frame (condition, accuracy, ci_low, ci_high, n, correct) plus answers_as_a and
        answers_as_b: the share of queries answered with task a's (b's) own answer, NaN when unknown."""
        df = super().to_frame()
        for col, m in (("answers_as_a", self.matches_a), ("answers_as_b", self.matches_b)):
            df[col] = [int(k) / self.n if m is not None and int(k) >= 0 else math.nan
                       for k in (m.tolist() if m is not None else [-1] * len(self.conditions))]
        return df

    def plot(self):
        """Bars per condition: accuracy on the composed task (95% Wilson intervals), and how often
        the prediction is task a's or task b's own answer instead."""
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure(go.Bar(x=df.condition, y=df.accuracy, name=f"accuracy on {self.task}",
                               error_y={"type": "data", "symmetric": False, "array": df.ci_high - df.accuracy,
                                        "arrayminus": df.accuracy - df.ci_low}))
        for col, t in (("answers_as_a", self.task_a), ("answers_as_b", self.task_b)):
            if df[col].notna().all():
                fig.add_trace(go.Bar(x=df.condition, y=df[col], name=f"answers as {t}"))
        fig.update_layout(barmode="group", xaxis_title=f"condition (a = {self.task_a}, b = {self.task_b})")
        fig.update_layout(title=f"Composition on {self.task} (n={self.n}, cos(a, b) = {self.cos_ab:.2f})",
                          yaxis_title="accuracy", yaxis_range=[0, 1.05])
        return fig


@no_type_check
def composition(model, vec_a: TaskVector, vec_b: TaskVector, composed_task: Task | str, *, scales: Sequence[float] = (1.0, 0.5),
                shots: int | None = 5, seed: int = 0, n: int | None = None, batch_size: int = 64) -> Composition:
    """Accuracy on ``composed_task`` of ``s * (a + b)`` for each scale ``s``, against zero-shot,
    ``shots``-shot ICL (None: skipped) and each vector alone, on the same zero-shot test queries.

    ``scales=(1.0, 0.5)``: the plain sum and the mean of the two vectors.
    """
    from tvlens.prompts import make_prompts, make_splits
    from tvlens.vector import check_scale

    vec_a, vec_b = _check_vectors([vec_a, vec_b], "vec_a and vec_b")
    scales = tuple(check_scale(s, "scales") for s in scales)
    if not scales:
        raise ConfigError("scales must hold at least one number, e.g. scales=(1.0, 0.5)")
    task = _task(model, composed_task)
    splits = make_splits(task, seed=seed)
    ps = make_prompts(splits, "test", k=0, seed=seed, n=n)
    single = [_answers_of(model, ps, vec_a.task), _answers_of(model, ps, vec_b.task)]  # first tokens of each task's answer
    both = vec_a.with_values(vec_a.values + vec_b.values, task=task.name, method="sum", meta={})
    runs = [("zero-shot", _eval(model, ps, None, batch_size=batch_size))]
    if shots:
        from tvlens.evaluate import evaluate

        runs.append((f"{shots}-shot ICL", evaluate(model, make_prompts(splits, "test", k=shots, seed=seed, n=n), batch_size=batch_size)))
    runs += [("a", _eval(model, ps, vec_a, batch_size=batch_size)), ("b", _eval(model, ps, vec_b, batch_size=batch_size))]
    for s in scales:
        runs.append(("a+b" if s == 1.0 else f"{s:g}(a+b)", _eval(model, ps, both, s, batch_size=batch_size)))
    match = [torch.tensor([int((r.predicted == ids).sum()) if ids is not None else -1 for _, r in runs]) for ids in single]
    cos = float(torch.nn.functional.cosine_similarity(vec_a.values.flatten().float(), vec_b.values.flatten().float(), dim=0))
    return Composition(task.name, tuple(c for c, _ in runs), torch.tensor([r.correct for _, r in runs]), len(ps),
                       task_a=vec_a.task, task_b=vec_b.task, cos_ab=cos, scales=scales, matches_a=match[0],
                       matches_b=match[1], queries=tuple(q.query(task.template) for q in ps.queries),
                       predicted=torch.stack([r.predicted for _, r in runs]), gold=runs[0][1].gold)


def _answers_of(model, prompts, task_name: str):
    """First answer token of ``task_name`` for each query's input; None unless that task answers every one
    (from its examples, or from its rule in ``tvlens.tasks._composed.RULES``, e.g. capitalize)."""
    import dataclasses

    from tvlens.errors import TvlensError
    from tvlens.prompts import PromptSet
    from tvlens.tasks._composed import RULES

    try:
        other = _task(model, task_name)
    except TvlensError:
        return None
    table = {e.fields: e.output for e in other.examples}
    rule = RULES.get(other.name)
    if rule is not None and len(prompts.queries[0].fields) == 1:
        table.update({q.fields: rule(q.fields[0][1]) for q in prompts.queries if q.fields not in table})
    if not all(q.fields in table for q in prompts.queries):
        return None
    queries = tuple(dataclasses.replace(q, output=table[q.fields]) for q in prompts.queries)
    return PromptSet(other, prompts.split, prompts.k, queries, prompts.demos, prompts.seed).tokenize(model).answer_ids
