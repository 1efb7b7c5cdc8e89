"""The executor interface: local processes and Ray give the in-process results bit for bit; a failing
job raises WorkerError naming it; nothing is left running."""

import multiprocessing

import pytest
import torch

import tvlens as tv
from tvlens._executor import LocalExecutor, RayExecutor, get_executor
from tvlens.errors import ConfigError, WorkerError
from tvlens.ltv._parallel import train_ltvs

QUICK = tv.LTVConfig(batch_size=8, epoch_size=16, max_epochs=2, patience=2, n_train=16, n_val=8)


def _square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed")
    return x * x


def test_local_in_process_and_workers_keep_job_order():
    jobs = [(x,) for x in (5, 1, 4)]
    assert LocalExecutor().map(_square_or_fail, jobs) == [25, 1, 16]
    assert LocalExecutor(2).map(_square_or_fail, jobs) == [25, 1, 16]


def test_failing_job_is_named_and_nothing_is_left_running():
    with pytest.raises(WorkerError, match=r"job 'x=3'.*three is not allowed") as info:
        LocalExecutor(2).map(_square_or_fail, [(1,), (3,), (2,)], names=["x=1", "x=3", "x=2"])
    assert info.value.job == "x=3"
    assert multiprocessing.active_children() == []
    with pytest.raises(ValueError, match="three") as info:  # in-process: the job's own error, with a note
        LocalExecutor().map(_square_or_fail, [(3,)], names=["x=3"])
    assert "x=3" in "".join(info.value.__notes__)


def test_bad_executor_settings():
    with pytest.raises(ConfigError, match="workers"):
        LocalExecutor(0)
    with pytest.raises(ConfigError, match="unknown executor"):
        get_executor("dask")
    with pytest.raises(ConfigError, match="--executor ray"):
        get_executor("local", address="ray://head:10001")


def _requests(task):
    splits = tv.make_splits(task, seed=0)
    return [(task, tv.site_grid([layer], [-1]), shots, QUICK, "clip", splits) for layer, shots in ((1, 0), (2, 1))]


def _in_process(model, requests):
    return [tv.train_ltv(model, t, sites=s, shots=k, config=c, out_of_range=o, splits=sp, progress=False, cache=False).vector
            for t, s, k, c, o, sp in requests]


def test_local_workers_give_the_in_process_vectors(toy_model, one_thread):
    reqs = _requests(tv.tasks.get("toy/antonym"))
    got = train_ltvs(reqs, spec="toy", executor=LocalExecutor(2))
    for a, b in zip(got, _in_process(toy_model, reqs)):
        assert a.sites == b.sites and torch.equal(a.values, b.values)
    assert train_ltvs(reqs, spec=None, executor=LocalExecutor(2)) is None  # no spec: the caller trains itself


def test_stored_requests_are_loaded_here_and_only_the_others_become_jobs(toy_model, one_thread, tmp_path, monkeypatch):
    # with the model given, a request already in the store never reaches a worker (none starts when all are stored)
    from tvlens.store import NO_CACHE_ENV

    monkeypatch.setenv("TVLENS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(NO_CACHE_ENV, raising=False)  # the default store on: workers inherit it
    reqs = _requests(tv.tasks.get("toy/antonym"))
    task, sites, shots, cfg, oor, splits = reqs[0]
    first = tv.train_ltv(toy_model, task, sites=sites, shots=shots, config=cfg, out_of_range=oor, splits=splits, progress=False)

    class Counting(LocalExecutor):
        jobs: list = []

        def map(self, fn, jobs, **kw):
            Counting.jobs.append(len(jobs))
            return super().map(fn, jobs, **kw)

    got = train_ltvs(reqs, spec="toy", executor=Counting(1), model=toy_model)
    assert Counting.jobs == [1]  # the stored request was loaded here
    assert torch.equal(got[0].values, first.vector.values)
    for a, b in zip(got, _in_process(toy_model, reqs)):
        assert a.sites == b.sites and torch.equal(a.values, b.values)
    again = train_ltvs(reqs, spec="toy", executor=Counting(1), model=toy_model)
    assert Counting.jobs == [1] and all(torch.equal(a.values, b.values) for a, b in zip(again, got))  # no job at all


def test_ray_gives_the_local_vectors(toy_model, one_thread):
    ray = pytest.importorskip("ray")
    reqs = _requests(tv.tasks.get("toy/antonym"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = train_ltvs(reqs, spec="toy", executor=RayExecutor())
        for a, b in zip(got, _in_process(toy_model, reqs)):
            assert a.sites == b.sites and torch.equal(a.values, b.values)
        with pytest.raises(WorkerError, match=r"job 'x=3' failed on Ray.*three is not allowed"):
            RayExecutor().map(_square_or_fail, [(1,), (3,)], names=["x=1", "x=3"])
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


def test_ray_executor_starts_and_stops_its_own_instance():
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    assert RayExecutor(num_cpus=2).map(_square_or_fail, [(2,), (4,)]) == [4, 16]
    assert not ray.is_initialized()  # the local instance it started is shut down


def test_ray_missing_is_a_config_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"tvlens\[ray\]"):
        get_executor("ray")


def test_cli_sweep_with_workers_equals_in_process(capsys):
    import json

    from tvlens.cli._main import main

    base = ["sweep", "--model", "toy", "--task", "antonym", "--layers", "0", "1", "--methods", "ltv", "--json"]
    assert main(base) == 0
    seq = json.loads(capsys.readouterr().out)
    assert main([*base, "--executor", "local", "--workers", "2"]) == 0
    par = json.loads(capsys.readouterr().out)
    assert par["methods"] == seq["methods"] and par["layers"] == [0, 1]
    assert multiprocessing.active_children() == []
    assert main([*base, "--address", "x:1", "--executor", "local"]) == 2  # --address without ray: a usage error
    assert "--executor ray" in json.loads(capsys.readouterr().out)["error"]["message"]


def test_report_sections_with_workers_equal_in_process(toy_model, one_thread):
    # the report's sweep and comparison fan their LTVs out to workers: the same accuracies as in-process training
    import torch

    from tvlens.viz.report import build_report

    seq = build_report(toy_model, "toy/antonym", sections=["sweep", "compare"], progress=False)
    par = build_report(toy_model, "toy/antonym", sections=["sweep", "compare"], progress=False, executor=LocalExecutor(2),
                       spec="toy")
    assert all(s.ok for s in (*seq.sections, *par.sections))
    (sweep_a,), (sweep_b,) = seq.sections[0].results, par.sections[0].results
    assert torch.equal(sweep_a.correct, sweep_b.correct) and sweep_a.layers == sweep_b.layers
    (cmp_a,), (cmp_b,) = seq.sections[1].results, par.sections[1].results
    assert cmp_a.to_frame().equals(cmp_b.to_frame())
    assert multiprocessing.active_children() == []
