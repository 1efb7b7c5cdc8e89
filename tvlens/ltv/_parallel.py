"""Train one single-site LTV per layer, optionally across worker processes.

Each worker is a fresh ``spawn`` process that runs on one torch thread, loads the model from its spec
string and trains its layers with exactly the call of the sequential loop (same splits, config, seed),
so the vectors equal those of ``workers=1``. Vectors come back as safetensors files in a temp dir.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import time
from pathlib import Path

from tvlens.errors import ConfigError, WorkerError

log = logging.getLogger(__name__)

_WORKER: dict = {}


def _init(spec: str, task, seed: int, outdir: str) -> None:
    try:  # an initializer that raises makes multiprocessing.Pool respawn workers forever: report it per layer
        _load(spec, task, seed, outdir)
    except BaseException as e:  # noqa: BLE001
        import traceback

        _WORKER["init_error"] = f"loading {spec!r} in the worker: {type(e).__name__}: {e}\n{traceback.format_exc()}"


def _load(spec: str, task, seed: int, outdir: str) -> None:
    import torch

    torch.set_num_threads(1)
    from tvlens._models import load_model
    from tvlens.prompts import make_splits
    from tvlens.tasks import get as get_task

    model = load_model(spec)
    task = get_task(task) if isinstance(task, str) else task
    _WORKER.update(model=model, task=task, seed=seed, outdir=outdir, splits=make_splits(task, seed=seed))


def _train_one(layer: int) -> tuple[int, str | None, float, str | None]:
    import traceback

    from tvlens.ltv._config import LTVConfig
    from tvlens.ltv._train import train_ltv

    w = _WORKER
    t0 = time.perf_counter()
    if "init_error" in w:
        return layer, None, 0.0, w["init_error"]
    try:
        vec = train_ltv(w["model"], w["task"], layers=[layer], config=LTVConfig(seed=w["seed"]),
                           splits=w["splits"], progress=False).vector
        path = Path(w["outdir"]) / f"ltv_L{layer}.safetensors"
        vec.save(path, overwrite=True)
        return layer, str(path), time.perf_counter() - t0, None
    except BaseException as e:  # noqa: BLE001 - reported to the parent with its traceback
        return layer, None, time.perf_counter() - t0, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"


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
                     progress: bool = True) -> tuple[dict, dict]:
    """Train one single-site LTV (last position) per layer; ``({layer: TaskVector}, {layer: seconds})``.

    Every layer gets ``train_ltv(model, task, layers=[layer], config=LTVConfig(seed=seed),
    splits=make_splits(task, seed=seed))``. With ``workers > 1`` and a model ``spec`` string (what
    ``load_model`` takes: ``"toy"``, ``"smollm2"``, a gguf path, an HF folder) the layers are trained
    in that many spawned processes, one torch thread each, handed out in order one at a time (early,
    slow layers first); the vectors are identical to ``workers=1``. A task that is neither registered nor
    picklable falls back to the sequential loop (logged warning). A failing layer raises
    :class:`tvlens.errors.WorkerError` naming it; the pool is terminated and the temp dir removed.
    """
    import multiprocessing as mp
    import shutil

    from tvlens.ltv._config import LTVConfig
    from tvlens.ltv._train import train_ltv
    from tvlens.prompts import make_splits
    from tvlens.tasks import get as get_task
    from tvlens.vector import TaskVector

    layers = list(layers)
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layers {layers} repeat a layer; give each layer once")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}; give an integer >= 1 (1 = train in this process)")
    task = get_task(task) if isinstance(task, str) else task
    workers = min(workers, len(layers))
    ship = None
    if workers > 1:
        if not isinstance(spec, str):
            log.warning("workers=%d needs the model's spec string (spec=...); training sequentially", workers)
        else:
            ship = _task_for_workers(task)
            if ship is None:
                log.warning("task %r is neither registered nor picklable; training its layers sequentially",
                            getattr(task, "name", task))
    out, secs = {}, {}
    if workers <= 1 or ship is None or not isinstance(spec, str):
        splits = make_splits(task, seed=seed)
        for layer in layers:
            t0 = time.perf_counter()
            out[layer] = train_ltv(model, task, layers=[layer], config=LTVConfig(seed=seed), splits=splits,
                                      progress=progress).vector
            secs[layer] = round(time.perf_counter() - t0, 2)
        return out, secs
    from tqdm.auto import tqdm

    tmp = tempfile.mkdtemp(prefix="tvlens-ltv-")
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(workers, initializer=_init, initargs=(spec, ship, seed, tmp))
    try:
        bar = tqdm(total=len(layers), desc=f"LTVs ({workers} workers)", disable=not progress)
        for layer, path, dt, err in pool.imap_unordered(_train_one, layers, chunksize=1):
            if err is not None:
                raise WorkerError(f"training the LTV at layer {layer} failed in a worker process: {err.strip()}\n"
                                  "Fix the cause above, or run with workers=1 (--workers 1) to debug in-process.")
            out[layer] = TaskVector.load(path)
            secs[layer] = round(dt, 2)
            bar.update(1)
        bar.close()
        pool.close()
        pool.join()
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {layer: out[layer] for layer in layers}, {layer: secs[layer] for layer in layers}


def default_workers(n_layers_to_train: int) -> int:
    """min(os.cpu_count(), layers to train), at least 1."""
    return max(1, min(os.cpu_count() or 1, n_layers_to_train))
