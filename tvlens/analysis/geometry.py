"""How task vectors relate: their cosine geometry, transfer across tasks, and composition.

Context:
    The paper (Figure 4) finds that LTVs trained from different seeds on one task point the same
    way (tight within-task clusters) while vectors of different tasks are nearly orthogonal, that
    a task's vector does little for another task, and leaves open whether vectors compose. Three
    functions measure this on any model:

    - :func:`vector_cosines`: the cosine matrix of a set of vectors (all sites flattened), with
      within-task and across-task summaries;
    - :func:`transfer_matrix`: accuracy of each vector on each task's zero-shot test queries;
    - :func:`composition`: the sum of two task vectors on the task that needs both, against
      zero-shot and each vector alone (and scaled sums).

    :func:`train_vectors` trains the LTVs these need (tasks x seeds at one site).

>>> import tvlens as tv
>>> from tvlens.analysis import train_vectors, vector_cosines
>>> model = tv.load_model("toy")
>>> vs = train_vectors(model, ["toy/antonym", "toy/capital"], seeds=(0, 1), layer=2)
>>> cm = vector_cosines(vs)
>>> cm.within_mean > cm.across_mean
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tvlens._result import Result
from tvlens._validate import no_type_check
from tvlens.errors import ConfigError
from tvlens.tasks._task import Task
from tvlens.vector import TaskVector

__all__ = ["CosineMatrix", "Composition", "Transfer", "composition", "train_vectors", "transfer_matrix", "vector_cosines"]


def _label(v: TaskVector, i: int) -> str:
    seed = (v.meta.get("config") or {}).get("seed", v.meta.get("seed"))
    return f"{v.task or 'vector'}#{seed if seed is not None else i}"


def _labels(vectors: Sequence[TaskVector]) -> tuple[str, ...]:
    labels = [_label(v, i) for i, v in enumerate(vectors)]
    return tuple(lab if labels.count(lab) == 1 else f"{lab}.{i}" for i, lab in enumerate(labels))


def _check_vectors(vectors, what: str = "vectors") -> list[TaskVector]:
    vectors = list(vectors.values()) if isinstance(vectors, dict) else list(vectors)
    if not vectors or not all(isinstance(v, TaskVector) for v in vectors):
        raise ConfigError(f"{what} must be a non-empty sequence of tv.TaskVector; train them with "
                          "tv.analysis.train_vectors(model, tasks, seeds=...)")
    shape, sites = vectors[0].values.shape, vectors[0].sites
    for v in vectors[1:]:
        if v.values.shape != shape or v.sites != sites:
            raise ConfigError(f"all {what} must share their sites to be compared; got {[str(s) for s in sites]} and "
                              f"{[str(s) for s in v.sites]}; train every vector at the same layer(s) and position(s)")
    return vectors


def _task(model, task: Task | str) -> Task:
    from tvlens.tasks import resolve

    if isinstance(task, Task):
        return task
    if not isinstance(task, str):
        raise ConfigError(f"a task must be a tv.tasks.Task or a registered name, got {type(task).__name__}")
    return resolve(task, model_name="toy" if getattr(model.cfg, "model_name", "") == "tvlens-toy" else None)


def _ci(correct: int, n: int) -> tuple[float, float]:
    from tvlens.stats import wilson_interval

    return wilson_interval(int(correct), int(n))


# --- training the vectors --------------------------------------------------------------------


@no_type_check
def train_vectors(model, tasks: Sequence[Task | str], *, seeds: Sequence[int] = (0, 1, 2), layer: int | None = None,
                  config=None, split_seed: int = 0, vary_splits: bool = False) -> list[TaskVector]:
    """One LTV per (task, seed) at ``layer`` (default: the middle layer), last position.

    The seed varies the LTV's initialisation and query order (``LTVConfig.seed``); the splits stay
    those of ``split_seed``, so every seed sees the same training queries, unless ``vary_splits``:
    then seed ``s`` also draws its own splits (``make_splits(task, seed=split_seed + s)``), so the
    vectors of one task differ in their training queries too. (Their training queries then overlap
    other seeds' test queries: evaluate such vectors on their own task only with their own splits.)
    """
    import dataclasses

    from tqdm.auto import tqdm

    from tvlens.ltv import LTVConfig, train_ltv
    from tvlens.prompts import make_splits

    config = config or LTVConfig()
    if not seeds:
        raise ConfigError("seeds must name at least one seed, e.g. seeds=(0, 1, 2)")
    out = []
    tasks = [_task(model, t) for t in tasks]
    for task in tqdm(tasks, desc="ltv per task x seed", disable=None, leave=False):
        for s in seeds:
            splits = make_splits(task, seed=split_seed + int(s) if vary_splits else split_seed)
            res = train_ltv(model, task, layers=layer, config=dataclasses.replace(config, seed=int(s)), splits=splits, progress=False)
            out.append(res.vector)
    return out


# --- cosines ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class CosineMatrix(Result):
    """Cosine similarity of every pair of vectors (values over all sites flattened)."""

    labels: tuple[str, ...]  # one per vector, "task#seed"
    tasks: tuple[str, ...]  # the task of each vector
    cos: Float[torch.Tensor, "vector vector"]
    norms: Float[torch.Tensor, " vector"]

    def _pairs(self, same: bool) -> torch.Tensor:
        t = self.tasks
        n = len(t)
        mask = torch.tensor([[(t[i] == t[j]) == same and i != j for j in range(n)] for i in range(n)])
        return self.cos[mask]

    @property
    def within_mean(self) -> float:
        """Mean cosine over pairs of distinct vectors of the same task (NaN with one seed)."""
        p = self._pairs(True)
        return float(p.mean()) if p.numel() else math.nan

    @property
    def across_mean(self) -> float:
        """Mean cosine over pairs of vectors of different tasks (NaN with one task)."""
        p = self._pairs(False)
        return float(p.mean()) if p.numel() else math.nan

    @property
    def across_abs_mean(self) -> float:
        p = self._pairs(False)
        return float(p.abs().mean()) if p.numel() else math.nan

    def summary(self):
        """Per task: mean and min within-task cosine, mean and max across-task cosine, separated."""
        import pandas as pd

        rows = []
        for task in dict.fromkeys(self.tasks):
            idx = [i for i, t in enumerate(self.tasks) if t == task]
            other = [j for j, t in enumerate(self.tasks) if t != task]
            w = self.cos[idx][:, idx][~torch.eye(len(idx), dtype=torch.bool)] if len(idx) > 1 else torch.empty(0)
            a = self.cos[idx][:, other].flatten() if other else torch.empty(0)
            rows.append({"task": task, "n_vectors": len(idx),
                         "within_mean": float(w.mean()) if w.numel() else math.nan,
                         "within_min": float(w.min()) if w.numel() else math.nan,
                         "across_mean": float(a.mean()) if a.numel() else math.nan,
                         "across_max": float(a.max()) if a.numel() else math.nan,
                         "separated": bool(w.numel() and a.numel() and w.min() > a.max())})
        return pd.DataFrame(rows)

    def to_frame(self):
        """One row per ordered pair of distinct vectors: a, b, their tasks, same_task, cosine."""
        import pandas as pd

        n = len(self.labels)
        rows = [{"a": self.labels[i], "b": self.labels[j], "task_a": self.tasks[i], "task_b": self.tasks[j],
                 "same_task": self.tasks[i] == self.tasks[j], "cosine": float(self.cos[i, j])}
                for i in range(n) for j in range(n) if i != j]
        return pd.DataFrame(rows)

    def plot(self):
        """Heatmap of the cosine matrix (the paper's Figure 4), vectors grouped by task."""
        import plotly.graph_objects as go

        fig = go.Figure(go.Heatmap(z=self.cos.tolist(), x=list(self.labels), y=list(self.labels), zmin=-1, zmax=1,
                                   colorscale="RdBu_r", colorbar={"title": "cosine"},
                                   hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"))
        fig.update_layout(title=f"Cosine between task vectors: within-task {self.within_mean:.2f}, across-task {self.across_mean:.2f}",
                          yaxis={"autorange": "reversed"}, height=max(420, 22 * len(self.labels) + 200))
        return fig

    def __repr__(self) -> str:
        return (f"CosineMatrix({len(self.labels)} vectors, {len(set(self.tasks))} tasks: within {self.within_mean:.3f}, "
                f"across {self.across_mean:.3f})")


@no_type_check
def vector_cosines(vectors: Sequence[TaskVector] | dict) -> CosineMatrix:
    """The cosine matrix of ``vectors`` (all sharing their sites), grouped by task in the given order."""
    vectors = _check_vectors(vectors)
    flat = torch.stack([v.values.detach().float().flatten() for v in vectors])  # [vector, site*d_model]
    norms = flat.norm(dim=1)
    if bool((norms == 0).any()):
        zero = [_labels(vectors)[i] for i in (norms == 0).nonzero().flatten().tolist()]
        raise ConfigError(f"vectors {zero} are zero: a cosine needs a non-zero vector; drop them or retrain")
    unit = flat / norms[:, None]
    cos = (unit @ unit.T).clamp(-1, 1)  # [vector, vector]
    return CosineMatrix(_labels(vectors), tuple(v.task for v in vectors), cos, norms)


# --- transfer --------------------------------------------------------------------------------


def _eval(model, prompts, vector: TaskVector | None, scale: float | None = None, batch_size: int = 64):
    from tvlens.evaluate import evaluate
    from tvlens.steer import steering

    # the Edit, not steering(): evaluating a vector on another task is the point here, not a slip to warn about
    edit = None if vector is None else steering(model, vector, scale, allow_other_fingerprint=True).edit
    return evaluate(model, prompts, intervention=edit, batch_size=batch_size)


def _eval_correct(model, prompts, vector: TaskVector | None, scale: float | None = None, batch_size: int = 64) -> int:
    return _eval(model, prompts, vector, scale, batch_size).correct


@dataclass(frozen=True, eq=False, repr=False)
class Transfer(Result):
    """Accuracy of each vector (rows) on each task's zero-shot test queries (columns)."""

    labels: tuple[str, ...]  # one per vector
    vector_tasks: tuple[str, ...]  # the task each vector was trained on
    tasks: tuple[str, ...]  # the evaluation tasks
    correct: Int[torch.Tensor, "vector task"]
    n: Int[torch.Tensor, " task"]  # test queries per task
    zero_shot_correct: Int[torch.Tensor, " task"]

    @property
    def accuracy(self) -> Float[torch.Tensor, "vector task"]:
        return self.correct.float() / self.n.float()

    @property
    def zero_shot(self) -> Float[torch.Tensor, " task"]:
        return self.zero_shot_correct.float() / self.n.float()

    @property
    def own(self) -> torch.Tensor:
        """[vector, task] True where the vector was trained on that task."""
        return torch.tensor([[vt == t for t in self.tasks] for vt in self.vector_tasks], dtype=torch.bool)

    @property
    def own_mean(self) -> float:
        a = self.accuracy[self.own]
        return float(a.mean()) if a.numel() else math.nan

    @property
    def off_mean(self) -> float:
        """Mean accuracy of vectors on tasks they were not trained on."""
        a = self.accuracy[~self.own]
        return float(a.mean()) if a.numel() else math.nan

    @property
    def off_gain_mean(self) -> float:
        """Mean of (accuracy - that task's zero-shot accuracy) off the own-task cells."""
        g = (self.accuracy - self.zero_shot[None, :])[~self.own]
        return float(g.mean()) if g.numel() else math.nan

    def to_frame(self):
        """One row per (vector, task): accuracy with its 95% Wilson interval, zero-shot, own-task flag."""
        import pandas as pd

        rows = []
        for i, lab in enumerate(self.labels):
            for j, t in enumerate(self.tasks):
                c, n = int(self.correct[i, j]), int(self.n[j])
                lo, hi = _ci(c, n)
                rows.append({"vector": lab, "vector_task": self.vector_tasks[i], "task": t, "own": self.vector_tasks[i] == t,
                             "accuracy": c / n, "ci_low": lo, "ci_high": hi, "zero_shot": int(self.zero_shot_correct[j]) / n, "n": n})
        return pd.DataFrame(rows)

    def plot(self):
        """Heatmap: rows vectors, columns tasks, a last row with zero-shot accuracy."""
        import plotly.graph_objects as go

        z = self.accuracy.tolist() + [self.zero_shot.tolist()]
        y = list(self.labels) + ["(zero-shot)"]
        fig = go.Figure(go.Heatmap(z=z, x=list(self.tasks), y=y, zmin=0, zmax=1, colorscale="Viridis",
                                   colorbar={"title": "accuracy"}, texttemplate="%{z:.2f}",
                                   hovertemplate="vector %{y} on %{x}: %{z:.3f}<extra></extra>"))
        fig.update_layout(title=f"Transfer: own task {self.own_mean:.2f}, other tasks {self.off_mean:.2f} (gain over zero-shot {self.off_gain_mean:+.2f})",
                          xaxis_title="evaluated on", yaxis_title="vector", yaxis={"autorange": "reversed"},
                          height=max(420, 24 * len(y) + 200))
        return fig

    def __repr__(self) -> str:
        return (f"Transfer({len(self.labels)} vectors x {len(self.tasks)} tasks: own {self.own_mean:.3f}, "
                f"other {self.off_mean:.3f}, gain over zero-shot {self.off_gain_mean:+.3f})")


@no_type_check
def transfer_matrix(model, vectors: Sequence[TaskVector] | dict, tasks: Sequence[Task | str] | None = None, *,
                    seed: int = 0, n: int | None = None, batch_size: int = 64) -> Transfer:
    """Accuracy of every vector on every task's zero-shot test queries (default tasks: the vectors' own)."""
    from tqdm.auto import tqdm

    from tvlens.prompts import make_prompts, make_splits

    vectors = _check_vectors(vectors)
    for v in vectors:
        v.check_compatible(model, allow_other_fingerprint=True)
    if tasks is None:
        tasks = list(dict.fromkeys(v.task for v in vectors))
    tasks = [_task(model, t) for t in tasks]
    if not tasks:
        raise ConfigError("tasks is empty; name at least one task to evaluate the vectors on")
    correct = torch.zeros(len(vectors), len(tasks), dtype=torch.long)
    ns, zs = [], []
    for j, task in enumerate(tqdm(tasks, desc="transfer", disable=None, leave=False)):
        ps = make_prompts(make_splits(task, seed=seed), "test", k=0, seed=seed, n=n)
        ns.append(len(ps))
        zs.append(_eval_correct(model, ps, None, batch_size=batch_size))
        for i, v in enumerate(vectors):
            correct[i, j] = _eval_correct(model, ps, v, batch_size=batch_size)
    return Transfer(_labels(vectors), tuple(v.task for v in vectors), tuple(t.name for t in tasks), correct,
                    torch.tensor(ns), torch.tensor(zs))


# --- composition -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class Composition(Result):
    """Accuracy on a composed task: zero-shot, ICL, each vector alone, their (scaled) sums."""

    task: str  # the composed task
    task_a: str
    task_b: str
    conditions: tuple[str, ...]  # e.g. "zero-shot", "5-shot ICL", "a", "b", "a+b", "0.5(a+b)"
    correct: Int[torch.Tensor, " condition"]
    n: int
    cos_ab: float  # cosine between the two vectors
    scales: tuple[float, ...]  # the sum scales evaluated
    matches_a: Int[torch.Tensor, " condition"]  # predictions equal to task_a's own answer for the input (-1: unknown)
    matches_b: Int[torch.Tensor, " condition"]  # likewise for task_b

    @property
    def accuracy(self) -> dict[str, float]:
        return {c: int(k) / self.n for c, k in zip(self.conditions, self.correct)}

    def at(self, condition: str) -> float:
        return self.accuracy[condition]

    @property
    def best_sum(self) -> str:
        sums = [c for c in self.conditions if "a+b" in c]
        return max(sums, key=lambda c: self.accuracy[c])

    @property
    def sum_beats_each(self) -> bool:
        """The best sum's 95% interval lies above zero-shot's and each single vector's upper bound."""
        lo = _ci(int(self.correct[self.conditions.index(self.best_sum)]), self.n)[0]
        return all(lo > _ci(int(self.correct[self.conditions.index(c)]), self.n)[1] for c in ("zero-shot", "a", "b"))

    def to_frame(self):
        import pandas as pd

        rows = []
        for c, k in zip(self.conditions, self.correct.tolist()):
            lo, hi = _ci(k, self.n)
            i = self.conditions.index(c)
            ma, mb = int(self.matches_a[i]), int(self.matches_b[i])
            rows.append({"condition": c, "accuracy": k / self.n, "ci_low": lo, "ci_high": hi, "n": self.n,
                         "answers_as_a": ma / self.n if ma >= 0 else math.nan, "answers_as_b": mb / self.n if mb >= 0 else math.nan})
        return pd.DataFrame(rows)

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

    def __repr__(self) -> str:
        acc = ", ".join(f"{c}={a:.2f}" for c, a in self.accuracy.items())
        return f"Composition({self.task!r}: {acc})"


@no_type_check
def composition(model, vec_a: TaskVector, vec_b: TaskVector, composed_task: Task | str, *, scales: Sequence[float] = (1.0, 0.5),
                icl_shots: int | None = 5, seed: int = 0, n: int | None = None, batch_size: int = 64) -> Composition:
    """Accuracy on ``composed_task`` of ``s * (a + b)`` for each scale ``s``, against zero-shot,
    ``icl_shots``-shot ICL (None: skipped) and each vector alone, on the same zero-shot test queries.

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
    if icl_shots:
        from tvlens.evaluate import evaluate

        runs.append((f"{icl_shots}-shot ICL", evaluate(model, make_prompts(splits, "test", k=icl_shots, seed=seed, n=n), batch_size=batch_size)))
    runs += [("a", _eval(model, ps, vec_a, batch_size=batch_size)), ("b", _eval(model, ps, vec_b, batch_size=batch_size))]
    for s in scales:
        runs.append(("a+b" if s == 1.0 else f"{s:g}(a+b)", _eval(model, ps, both, s, batch_size=batch_size)))
    match = [torch.tensor([int((r.predicted == ids).sum()) if ids is not None else -1 for _, r in runs]) for ids in single]
    cos = float(torch.nn.functional.cosine_similarity(vec_a.values.flatten().float(), vec_b.values.flatten().float(), dim=0))
    return Composition(task.name, vec_a.task, vec_b.task, tuple(c for c, _ in runs), torch.tensor([r.correct for _, r in runs]),
                       len(ps), cos, scales, match[0], match[1])


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
