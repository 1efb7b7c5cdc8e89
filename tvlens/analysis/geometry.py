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
from tvlens.analysis._vectors import _check_vectors, _ci, _eval_correct, _labels, _task
from tvlens.analysis._inputs import check_vector
from tvlens.errors import ConfigError
from tvlens.tasks._task import Task
from tvlens.vector import TaskVector

__all__ = ["CosineMatrix", "Composition", "Transfer", "composition", "train_vectors", "transfer_matrix", "vector_cosines"]


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

    from tvlens import _progress
    from tvlens.ltv import LTVConfig, train_ltv
    from tvlens.prompts import make_splits

    config = config or LTVConfig()
    if not seeds:
        raise ConfigError("seeds must name at least one seed, e.g. seeds=(0, 1, 2)")
    out = []
    if isinstance(tasks, (str, Task)):  # iterating a name would look up one task per character
        raise ConfigError(f"tasks must be a list of tasks or task names, got {tasks!r}; write tasks=[{tasks!r}]")
    tasks = [_task(model, t) for t in tasks]
    for task in _progress.bar(tasks, desc="ltv per task x seed", disable=None, leave=False):
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

    def per_task(self):
        """Per task (a DataFrame): mean and min within-task cosine, mean and max across-task cosine, separated."""
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

    def summary(self) -> dict:
        """The headline numbers (a dict, like every result's summary): within / across means and :meth:`per_task` as records."""
        return {"within_mean": self.within_mean, "across_mean": self.across_mean, "across_abs_mean": self.across_abs_mean,
                "per_task": self.per_task().to_dict(orient="records")}

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
    from tvlens import _progress
    from tvlens.prompts import make_prompts, make_splits

    vectors = _check_vectors(vectors)
    for v in vectors:
        check_vector(model, v)  # warns for another model's vector; another task's is the point here
    if tasks is None:
        tasks = list(dict.fromkeys(v.task for v in vectors))
    if isinstance(tasks, (str, Task)):  # iterating a name would look up one task per character
        raise ConfigError(f"tasks must be a list of tasks or task names, got {tasks!r}; write tasks=[{tasks!r}]")
    tasks = [_task(model, t) for t in tasks]
    if not tasks:
        raise ConfigError("tasks is empty; name at least one task to evaluate the vectors on")
    correct = torch.zeros(len(vectors), len(tasks), dtype=torch.long)
    ns, zs = [], []
    for j, task in enumerate(_progress.bar(tasks, desc="transfer", disable=None, leave=False)):
        ps = make_prompts(make_splits(task, seed=seed), "test", k=0, seed=seed, n=n)
        ns.append(len(ps))
        zs.append(_eval_correct(model, ps, None, batch_size=batch_size))
        for i, v in enumerate(vectors):
            correct[i, j] = _eval_correct(model, ps, v, batch_size=batch_size)
    return Transfer(_labels(vectors), tuple(v.task for v in vectors), tuple(t.name for t in tasks), correct,
                    torch.tensor(ns), torch.tensor(zs))


# composition lives in its own module (tvlens.analysis._composition); these names are part of this one's contract
from tvlens.analysis._composition import Composition as Composition  # noqa: E402
from tvlens.analysis._composition import composition as composition  # noqa: E402


# --- the suite of `tvlens analyze geometry` and the report's section ---------------------------

from dataclasses import field as _field  # noqa: E402

from tvlens.analysis._registry import Analysis, Options, register  # noqa: E402

TOY_TASKS = ("toy/antonym", "toy/capitalize", "toy/successor", "toy/capital", "toy/add3", "toy/sentiment")
TOY_COMPOSED = "toy/capitalize+antonym"
REAL_TASKS = ("capitalize", "antonym", "capital")
REAL_COMPOSED = "capitalize+antonym"


def vector_labels(vectors: Sequence[TaskVector]) -> tuple[str, ...]:
    """``task#seed`` per vector (made unique with ``.i``), as the cosine and transfer matrices label them."""
    return _labels(vectors)


def resolve_task(model, task: Task | str) -> Task:
    """``task`` as a Task (a name resolved for ``model``: the embedded model's ``toy/`` names are found bare)."""
    return _task(model, task)


@dataclass(frozen=True, eq=False, repr=False)
class GeometrySuite(Result):
    """The cosine matrix, the transfer matrix and (optionally) the composition of one set of vectors."""

    vectors: tuple  # the TaskVectors (same sites)
    cosines: CosineMatrix
    transfer: Transfer
    composition: Composition | None
    layer: int

    def to_frame(self):
        return self.cosines.per_task()

    def plot(self):
        return self.cosines.plot()

    def payload(self) -> dict:
        cm, tr, comp = self.cosines, self.transfer, self.composition
        out = {
            "layer": self.layer,
            "cosine": {"labels": list(cm.labels), "tasks": list(cm.tasks), "matrix": cm.cos.tolist(), "within_mean": cm.within_mean,
                       "across_mean": cm.across_mean, "across_abs_mean": cm.across_abs_mean,
                       "per_task": cm.per_task().to_dict(orient="records")},
            "transfer": {"vectors": list(tr.labels), "vector_tasks": list(tr.vector_tasks), "tasks": list(tr.tasks),
                         "accuracy": tr.accuracy.tolist(), "zero_shot": tr.zero_shot.tolist(), "n": tr.n.tolist(),
                         "own_mean": tr.own_mean, "off_mean": tr.off_mean, "off_gain_mean": tr.off_gain_mean},
            "composition": None,
        }
        if comp is not None:
            out["composition"] = {"task": comp.task, "a": comp.task_a, "b": comp.task_b, "n": comp.n, "cos_ab": comp.cos_ab,
                                  "conditions": comp.to_frame().to_dict(orient="records"), "best_sum": comp.best_sum,
                                  "sum_beats_each": comp.sum_beats_each}
        return out

    def text(self) -> str:
        cm, tr, comp = self.cosines, self.transfer, self.composition
        f3 = lambda x: f"{x:.3f}"  # noqa: E731
        lines = [f"layer {self.layer}: {len(cm.labels)} vectors, {len(set(cm.tasks))} tasks",
                 f"cosine within-task {cm.within_mean:.3f}, across-task {cm.across_mean:.3f} (|.| {cm.across_abs_mean:.3f})",
                 cm.per_task().to_string(index=False, float_format=f3), "",
                 f"transfer: own task {tr.own_mean:.3f}, other tasks {tr.off_mean:.3f} (gain over zero-shot {tr.off_gain_mean:+.3f})",
                 tr.to_frame().groupby(["vector_task", "task"], sort=False).accuracy.mean().unstack().to_string(float_format=lambda x: f"{x:.2f}")]
        if comp is not None:
            lines += ["", f"composition on {comp.task} (a = {comp.task_a}, b = {comp.task_b}, cos {comp.cos_ab:.3f}, n {comp.n}):",
                      comp.to_frame().to_string(index=False, float_format=f3)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"GeometrySuite(layer {self.layer}, {len(self.vectors)} vectors, composition={self.composition is not None})"


@no_type_check
def geometry_suite(model, model_name: str, *, tasks=None, seeds=(0, 1, 2), layer=None, vectors=None, composed=None, parts=None,
                   scales=(1.0, 0.5), seed: int = 0, vary_splits: bool = False, template: str | None = None) -> GeometrySuite:
    """Vectors (given, or one LTV per task and seed at ``layer``), their cosines, their transfer, and the
    composition of ``parts`` on ``composed`` (default: the toy or real composed task; ``"none"`` to skip)."""
    from tvlens.tasks import resolve
    from tvlens.tasks._composed import parts as parts_of

    toy = model_name == "toy"
    layer = model.cfg.n_layers // 2 if layer is None else layer
    composed = composed or (TOY_COMPOSED if toy else REAL_COMPOSED)
    pa = None
    if composed != "none":  # checked before any training
        composed_task = resolve(composed, model_name=model_name, template=template)
        composed = composed_task.name
        pa = parts or parts_of(composed_task.base_name)
        if pa is None:
            raise ConfigError(f"--composed {composed!r} is not a registered composed task; name its two tasks with --parts A B")
        pa = [resolve(p, model_name=model_name, template=template).name for p in pa]
    if vectors is None:
        names = [resolve(t, model_name=model_name, template=template).name for t in tasks or (TOY_TASKS if toy else REAL_TASKS)]
        vectors = train_vectors(model, names, seeds=seeds, layer=layer, split_seed=seed, vary_splits=vary_splits)
    comp = None
    if pa is not None:
        pick = []
        for p in pa:  # the first vector of that task, else a fresh seed-0 LTV at the same sites
            have = [v for v in vectors if v.task == p]
            pick.append(have[0] if have else train_vectors(model, [p], seeds=seeds[:1], layer=vectors[0].layers[0], split_seed=seed)[0])
        comp = composition(model, pick[0], pick[1], composed, scales=scales, seed=seed)
    return GeometrySuite(tuple(vectors), vector_cosines(vectors), transfer_matrix(model, vectors, seed=seed), comp, vectors[0].layers[0])


@dataclass(frozen=True)
class GeometryOptions(Options):
    """Options of the report's geometry section (``tvlens analyze geometry`` keeps its own hand-written options)."""

    other_tasks: int | None = _field(default=None, metadata={"help": "other tasks' vectors (default 3 on the embedded model, 2 otherwise)", "min": 0})


def _run_geometry(ctx, opts: GeometryOptions):
    from tvlens.tasks._composed import COMPOSED, REAL_COMPOSED as REAL_COMPOSED_TASKS, parts

    pool = TOY_TASKS if ctx.toy else REAL_TASKS
    k = opts.other_tasks if opts.other_tasks is not None else (3 if ctx.toy else 2)
    others = [t for t in pool if t != ctx.task.name][:k]
    own = [ctx.vector, *train_vectors(ctx.model, [ctx.task], seeds=(ctx.seed + 1, ctx.seed + 2), layer=ctx.layer, split_seed=ctx.seed)]
    vectors = own + train_vectors(ctx.model, others, seeds=(ctx.seed,), layer=ctx.layer, split_seed=ctx.seed)
    out = [vector_cosines(vectors), transfer_matrix(ctx.model, vectors, seed=ctx.seed, n=ctx.n)]
    for name in [*COMPOSED, *REAL_COMPOSED_TASKS]:
        pa = parts(name)
        if ctx.task.name in pa and (name.startswith("toy/") == ctx.toy):
            by_task = {v.task: v for v in reversed(vectors)}
            pick = [by_task.get(p) or train_vectors(ctx.model, [p], seeds=(ctx.seed,), layer=ctx.layer, split_seed=ctx.seed)[0] for p in pa]
            out.append(composition(ctx.model, pick[0], pick[1], name, seed=ctx.seed, n=ctx.n))
    return out


register(Analysis("geometry", GeometryOptions, _run_geometry, CosineMatrix, "Cosines, transfer and composition", "Geometry",
                  "Cosine of this task's LTVs (3 seeds) and other tasks' (1 seed each) at the report layer (Figure 4); "
                  "each vector on each task; and, where a composed task uses this task, the sum of the two vectors.",
                  order=10, cli=False))
