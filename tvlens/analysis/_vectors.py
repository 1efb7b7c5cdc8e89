"""Helpers the geometry analyses share (labels, checks, task names, evaluation with a vector)."""

from __future__ import annotations

from collections.abc import Sequence

from tvlens.errors import ConfigError
from tvlens.tasks._task import Task
from tvlens.vector import TaskVector


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
    from tvlens._validate import check_finite

    for i, v in enumerate(vectors):
        check_finite(f"{what}[{i}] ({v.task!r})", v.values, "it was changed in place after it was built; reload or retrain it")
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


def _eval(model, prompts, vector: TaskVector | None, scale: float | None = None, batch_size: int = 64):
    from tvlens.evaluate import evaluate
    from tvlens.steer import steering

    # the Edit, not steering(): evaluating a vector on another task is the point here, not a slip to warn about
    edit = None if vector is None else steering(model, vector, scale, allow_other_fingerprint=True).edit
    return evaluate(model, prompts, intervention=edit, batch_size=batch_size)


def _eval_correct(model, prompts, vector: TaskVector | None, scale: float | None = None, batch_size: int = 64) -> int:
    return _eval(model, prompts, vector, scale, batch_size).correct
