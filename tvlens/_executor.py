"""One interface for independent jobs: in this process, in local worker processes, or on Ray.

Context:
    Layers of a sweep, cells of compare, seeds and tasks of geometry split into jobs that share
    nothing. :meth:`Executor.map` runs ``fn(*args)`` for each job and returns the values in job
    order, whatever order they finished in. ``fn`` must be a module-level function (workers import
    it by name) and its arguments and values plain data (numbers, strings, bytes, tvlens
    dataclasses); tvlens's jobs return vectors as safetensors bytes, so nothing is unpickled into
    a tensor.

    - :class:`LocalExecutor` (default): ``workers=1`` runs the jobs here, one after the other;
      ``workers>1`` in that many ``spawn`` processes on one torch thread each (today's ``--workers``).
    - :class:`RayExecutor` (``pip install 'tvlens[ray]'``): each job a Ray task with one CPU, on a
      local Ray instance it starts (and shuts down) or on the cluster at ``address`` (left running:
      it is not ours).

    Every job runs with the caller's ``TVLENS_*`` environment (cache dir, ``--no-cache``) and one
    torch thread, so a job's result equals a sequential run's on one torch thread bit for bit (torch's
    CPU kernels may round in the last bits differently at another thread count). A failing job raises
    :class:`~tvlens.errors.WorkerError` naming the job (``err.job``) with the worker's traceback
    (in-process, the job's own exception, with a note naming the job); the remaining jobs are
    cancelled and no worker is left running.

>>> from tvlens._executor import LocalExecutor
>>> LocalExecutor().map(pow, [(2, 3), (3, 2)], names=["2^3", "3^2"])
[8, 9]
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Callable, Sequence

from tvlens.errors import ConfigError, WorkerError

log = logging.getLogger(__name__)

_ENV_PREFIX = "TVLENS_"


def _caller_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIX)}


@contextlib.contextmanager
def _env(env: dict[str, str]):
    old = _caller_env()
    try:
        for k in set(old) - set(env):
            os.environ.pop(k, None)
        os.environ.update(env)
        yield
    finally:
        for k in set(_caller_env()) - set(old):
            os.environ.pop(k, None)
        os.environ.update(old)


def run_job(fn: Callable, args: tuple, env: dict[str, str], threads: int | None = 1) -> tuple[bool, object]:
    """Run one job in a worker: ``(True, value)`` or ``(False, "Type: message\\ntraceback")``."""
    try:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        with _env(env):
            return True, fn(*args)
    except BaseException as e:  # noqa: BLE001 - reported to the caller, which raises WorkerError
        return False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"


def _job_failed(name: str, where: str, err: str) -> WorkerError:
    e = WorkerError(f"job {name!r} failed {where}: {str(err).strip()}\n"
                    "Fix the cause above, or run with one worker (--workers 1, executor local) to debug in-process.")
    e.job = name
    return e


class Executor:
    """Runs independent jobs; subclasses implement :meth:`map`."""

    def map(self, fn: Callable, jobs: Sequence[tuple], *, names: Sequence[str] | None = None, desc: str = "jobs",
            progress: bool = False) -> list:
        raise NotImplementedError

    @staticmethod
    def _names(jobs: Sequence[tuple], names: Sequence[str] | None) -> list[str]:
        names = [f"job {i}" for i in range(len(jobs))] if names is None else [str(n) for n in names]
        if len(names) != len(jobs):
            raise ConfigError(f"{len(names)} names for {len(jobs)} jobs; give one name per job")
        return names


class LocalExecutor(Executor):
    """Jobs in this process (``workers=1``) or in ``workers`` spawned processes."""

    def __init__(self, workers: int = 1):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers={workers!r}; give an integer >= 1 (1 = run in this process)")
        self.workers = workers

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self.workers})"

    def map(self, fn, jobs, *, names=None, desc="jobs", progress=False) -> list:
        import multiprocessing as mp

        from tvlens import _progress

        jobs = [tuple(j) for j in jobs]
        names = self._names(jobs, names)
        out: list = [None] * len(jobs)
        bar = _progress.bar(total=len(jobs), desc=desc, disable=not progress, leave=False)
        try:
            if self.workers == 1 or len(jobs) <= 1:
                for i, args in enumerate(jobs):
                    try:
                        out[i] = fn(*args)  # in-process: the caller's threads; a failure keeps its own type
                    except Exception as e:
                        e.add_note(f"(in job {names[i]!r})")
                        raise
                    bar.update(1)
                return out
            env = _caller_env()
            pool = mp.get_context("spawn").Pool(min(self.workers, len(jobs)))
            try:
                tasks = [(i, fn, args, env) for i, args in enumerate(jobs)]
                for i, (ok, value) in pool.imap_unordered(_indexed, tasks, chunksize=1):
                    if not ok:
                        raise _job_failed(names[i], "in a worker process", value)
                    out[i] = value
                    bar.update(1)
                pool.close()
                pool.join()
            except BaseException:
                pool.terminate()  # nothing left running
                pool.join()
                raise
            return out
        finally:
            bar.close()


def _indexed(task):
    i, fn, args, env = task
    return i, run_job(fn, args, env)


class RayExecutor(Executor):
    """Jobs as Ray tasks (one CPU each): a local instance (started and shut down here) or ``address``."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("the Ray executor needs Ray: pip install 'tvlens[ray]' (or pip install ray), "
                              "or use the local executor (--executor local)") from None
        self.address, self.num_cpus = address, num_cpus

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r})"

    def map(self, fn, jobs, *, names=None, desc="jobs", progress=False) -> list:
        import ray

        from tvlens import _progress

        jobs = [tuple(j) for j in jobs]
        names = self._names(jobs, names)
        started = False
        if not ray.is_initialized():
            kw = {"address": self.address} if self.address else {"num_cpus": self.num_cpus, "include_dashboard": False}
            ray.init(**kw, log_to_driver=False, configure_logging=False)
            started = self.address is None  # a local instance we started is ours to shut down
        remote = ray.remote(num_cpus=1, max_retries=0)(run_job)
        env = _caller_env()
        refs = [remote.remote(fn, args, env) for args in jobs]
        index = {r: i for i, r in enumerate(refs)}
        out: list = [None] * len(jobs)
        bar = _progress.bar(total=len(jobs), desc=desc, disable=not progress, leave=False)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = index[ref]
                    try:
                        ok, value = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - the worker died (killed, out of memory)
                        ok, value = False, f"{type(e).__name__}: {e}"
                    if not ok:
                        raise _job_failed(names[i], "on Ray", value)
                    out[i] = value
                    bar.update(1)
            return out
        finally:
            bar.close()
            for ref in pending:  # after a failure or an interrupt: nothing left running
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


def get_executor(kind: str | Executor | None = "local", *, workers: int = 1, address: str | None = None) -> Executor:
    """``"local"`` (``workers`` processes; 1 = in-process), ``"ray"`` (``address``: a cluster; None: a local
    instance), or an :class:`Executor` as it is."""
    if isinstance(kind, Executor):
        return kind
    if kind in (None, "local"):
        if address is not None:
            raise ConfigError("--address is for the Ray executor; add --executor ray, or drop --address")
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address)
    raise ConfigError(f"unknown executor {kind!r}; use 'local' (worker processes) or 'ray' (pip install 'tvlens[ray]')")
