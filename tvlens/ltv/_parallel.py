"""Train one single-site LTV per layer, optionally across worker processes.

Each job runs in a worker (a fresh ``spawn`` process or a Ray task, :mod:`tvlens._executor`) on one
torch thread, loads the model from its spec string once per worker and trains with exactly the call of
the sequential loop (same splits, config, seed), so the vectors equal those of ``workers=1``. Vectors
come back as the bytes of their safetensors file.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import time
from pathlib import Path

from tvlens.errors import ConfigError

log = logging.getLogger(__name__)

_MODEL: dict = {}  # the model of this worker process, by spec (one at a time)


def _worker_model(spec: str):
    if spec not in _MODEL:
        from tvlens._models import load_model

        _MODEL.clear()
        try:
            _MODEL[spec] = load_model(spec)
        except Exception as e:
            e.add_note(f"(loading the model {spec!r} in the worker)")
            raise
    return _MODEL[spec]


def _ltv_job(spec: str, task, split_seed: int, sites: list, shots: int, config: dict, out_of_range: str) -> tuple[bytes, float]:
    """One LTV in a worker: the exact ``train_ltv`` call of the sequential loop; the vector as file bytes."""
    from tvlens.ltv._config import LTVConfig
    from tvlens.ltv._train import train_ltv
    from tvlens.prompts import make_splits
    from tvlens.sites import Site
    from tvlens.tasks import get as get_task

    t0 = time.perf_counter()
    model = _worker_model(spec)
    task = get_task(task) if isinstance(task, str) else task
    vec = train_ltv(model, task, sites=[Site(layer, pos) for layer, pos in sites], shots=shots,
                       config=LTVConfig.from_dict(config), splits=make_splits(task, seed=split_seed),
                       out_of_range=out_of_range, progress=False).vector
    with tempfile.TemporaryDirectory(prefix="tvlens-ltv-") as tmp:
        path = vec.save(Path(tmp) / "ltv.safetensors")
        return path.read_bytes(), time.perf_counter() - t0


def _vector_from_bytes(data: bytes):
    from tvlens.vector import TaskVector

    with tempfile.TemporaryDirectory(prefix="tvlens-ltv-") as tmp:
        path = Path(tmp) / "ltv.safetensors"
        path.write_bytes(data)
        return TaskVector.load(path)


def _task_for_workers(task):
    """The task's registered name, the task itself if it pickles, else None (-> sequential)."""
    from tvlens.tasks import get, names

    name = getattr(task, "name", None)
    if name in set(names()):
        try:
            if get(name) == task or pickle.dumps(get(name)) == pickle.dumps(task):
                return name
        except Exception:  # noqa: BLE001
            pass
    try:
        pickle.dumps(task)
        return task
    except Exception:  # noqa: BLE001
        return None


def train_ltv_layers(model, task, layers, *, seed: int = 0, workers: int = 1, spec: str | None = None,
                     progress: bool = True, executor=None) -> tuple[dict, dict]:
    """Train one single-site LTV (last position) per layer; ``({layer: TaskVector}, {layer: seconds})``.

    Every layer gets ``train_ltv(model, task, layers=[layer], config=LTVConfig(seed=seed),
    splits=make_splits(task, seed=seed))``. With ``workers > 1`` (or an ``executor``, see
    :func:`tvlens._executor.get_executor`: ``"ray"`` or an Executor) and a model ``spec`` string (what
    ``load_model`` takes: ``"toy"``, ``"smollm2"``, a gguf path, an HF folder) the layers are jobs,
    handed out in order one at a time (early, slow layers first), each on one torch thread; the vectors
    are identical to ``workers=1``. A task that is neither registered nor picklable falls back to the
    sequential loop (logged warning). A failing layer raises :class:`tvlens.errors.WorkerError` naming
    it; no worker is left running and no temp file is left behind.
    """
    from tvlens.ltv._config import LTVConfig
    from tvlens.ltv._train import train_ltv
    from tvlens.prompts import make_splits
    from tvlens.tasks import get as get_task
    from tvlens._executor import LocalExecutor, get_executor

    layers = list(layers)
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layers {layers} repeat a layer; give each layer once")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}; give an integer >= 1 (1 = train in this process)")
    task = get_task(task) if isinstance(task, str) else task
    ex = get_executor(executor, workers=min(workers, len(layers))) if executor is not None else LocalExecutor(min(workers, len(layers)))
    ship = None
    if not (isinstance(ex, LocalExecutor) and ex.workers == 1):
        if not isinstance(spec, str):
            log.warning("%r needs the model's spec string (spec=...); training sequentially", ex)
        else:
            ship = _task_for_workers(task)
            if ship is None:
                log.warning("task %r is neither registered nor picklable; training its layers sequentially",
                            getattr(task, "name", task))
    out, secs = {}, {}
    if ship is None:
        splits = make_splits(task, seed=seed)
        for layer in layers:
            t0 = time.perf_counter()
            out[layer] = train_ltv(model, task, layers=[layer], config=LTVConfig(seed=seed), splits=splits,
                                      progress=progress).vector
            secs[layer] = round(time.perf_counter() - t0, 2)
        return out, secs
    config = LTVConfig(seed=seed).to_dict()
    jobs = [(spec, ship, seed, [[layer, -1]], 0, config, "error") for layer in layers]
    results = ex.map(_ltv_job, jobs, names=[f"layer {layer}" for layer in layers], desc=f"LTVs ({ex!r})", progress=progress)
    for layer, (data, dt) in zip(layers, results):
        out[layer] = _vector_from_bytes(data)
        secs[layer] = round(dt, 2)
    return out, secs


def train_ltvs(requests, *, spec: str | None, executor, progress: bool = False, model=None) -> list | None:
    """Fan ``requests`` out as jobs: each ``(task, sites, shots, config, out_of_range, splits)`` is trained
    exactly as ``train_ltv(model, task, sites=, shots=, config=, splits=, out_of_range=)`` would in this
    process on one torch thread (same vector, bit for bit); returns the TaskVectors in order, or None when the requests cannot
    leave this process (no spec string, a task that does not ship, splits that are not
    ``make_splits(task, seed=...)``): the caller then trains them itself. Workers use the vector store
    (:mod:`tvlens.store`) like any ``train_ltv`` call. With ``model`` (the one ``spec`` loads), requests already in
    the default store are loaded here and only the others become jobs: no worker starts (nor loads the model) for a hit."""
    from tvlens.prompts import make_splits
    from tvlens._executor import get_executor
    from tvlens.ltv._train import stored_ltv

    ex = get_executor(executor)  # checked even when every request is stored
    if not isinstance(spec, str):
        log.warning("fanning LTVs out needs the model's spec string; training them in this process")
        return None
    jobs, names, todo = [], [], []
    out: list = [None] * len(requests)
    for i, (task, sites, shots, config, out_of_range, splits) in enumerate(requests):
        ship = _task_for_workers(task)
        if ship is None or splits != make_splits(task, seed=splits.seed):
            log.warning("task %r (or its splits) cannot be rebuilt in a worker; training in this process", task.name)
            return None
        if model is not None and (hit := stored_ltv(model, task, sites=sites, shots=shots, config=config,
                                                     out_of_range=out_of_range, splits=splits)) is not None:
            out[i] = hit.vector
            continue
        jobs.append((spec, ship, splits.seed, [[s.layer, s.position] for s in sites], shots, config.to_dict(), out_of_range))
        names.append(f"ltv {task.name} at {', '.join(map(str, sites))} ({shots}-shot)")
        todo.append(i)
    if jobs:
        results = ex.map(_ltv_job, jobs, names=names, desc="LTVs", progress=progress)
        for i, (data, _) in zip(todo, results):
            out[i] = _vector_from_bytes(data)
    return out


def default_workers(n_layers_to_train: int) -> int:
    """min(os.cpu_count(), layers to train), at least 1."""
    return max(1, min(os.cpu_count() or 1, n_layers_to_train))
