"""The benchmark harness runs and reports the documented JSON shape (no timing assertions)."""

import json

import pytest

import tvlens as tv
from tvlens.bench import bench_ltv_step
from tvlens.ltv import build_targets


@pytest.fixture(scope="module")
def cached_model(toy_tokenizer, tmp_path_factory):
    """The LTV step entries time the fast path, which needs a prefix cache: on 4.x a Hugging Face-backed bridge."""
    from tests.conftest import make_cached_tiny_model

    return make_cached_tiny_model(toy_tokenizer, tmp_path_factory.mktemp("bench"))


def test_bench_entry_shape(cached_model):
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "train", k=2, n=8)
    tb = build_targets(cached_model, ps)
    r = bench_ltv_step("tiny", cached_model, tb, (tv.Site(1, -1),), batch=4, min_seconds=0.0)
    d = r.as_dict()
    assert {"name", "baseline_s", "fast_s", "ratio", "batch"} <= set(d)
    assert d["baseline_s"] > 0 and d["fast_s"] > 0 and d["ratio"] == d["baseline_s"] / d["fast_s"]
    json.dumps(d)


def test_bench_fv_aie_entry(tiny_model):
    from tvlens.bench import bench_fv_aie

    batch = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "train", k=2, n=4).tokenize(tiny_model)
    d = bench_fv_aie("tiny_aie", tiny_model, batch, heads_per_pass=3, min_seconds=0.0).as_dict()
    assert d["heads"] == 4 and d["prompts"] == 4 and d["ratio"] == d["baseline_s"] / d["fast_s"]
    assert d["max_abs_diff"] < 1e-5  # the batched AIE is the loop's
    json.dumps(d)


def test_bench_saliency_entry(tiny_model):
    import torch

    from tvlens.bench import bench_saliency

    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", n=4)
    v = tv.TaskVector(torch.randn(1, tiny_model.cfg.d_model), (tv.Site(0, -1),), model_fingerprint=tv.fingerprint(tiny_model))
    d = bench_saliency("tiny_saliency", tiny_model, v, ps, min_seconds=0.0).as_dict()
    assert d["heads"] == tiny_model.cfg.n_layers * tiny_model.cfg.n_heads and d["prompts"] == 4
    assert d["ratio"] == d["baseline_s"] / d["fast_s"] and -1 <= d["spearman"] <= 1
    json.dumps(d)


def test_bench_steered_eval_entry(tiny_model):
    from tvlens.bench import bench_engine_steered_eval

    batch = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=8, n=6).tokenize(tiny_model)
    d = bench_engine_steered_eval("tiny_steered", tiny_model, batch, range(tiny_model.cfg.n_layers), batch_size=4,
                                  min_seconds=0.0).as_dict()
    assert d["conditions"] == 1 + tiny_model.cfg.n_layers and d["prompts"] == 6
    assert d["max_abs_diff"] < 1e-5  # the engine's logits are the full forward's, verdicts identical
    assert d["ratio"] == d["baseline_s"] / d["fast_s"] and d["one_condition_ratio"] > 0
    json.dumps(d)


def test_engine_entries_agree_with_their_references_and_report_peak_memory(tiny_model):
    # every issue-#17 entry (AIE, exact saliency, zero/mean/path ablation, steered evaluation) on a tiny model:
    # the engine's numbers are the reference's, and each entry reports its own peak-memory window
    import torch

    from tvlens.bench import _engine_entries

    v = tv.TaskVector(3 * torch.randn(1, tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(1)), (tv.Site(1, -1),),
                      task="toy/antonym", model_fingerprint=tv.fingerprint(tiny_model))
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    rows = [r.as_dict() for r in _engine_entries("tiny", tiny_model, v, splits, quick=True, only=None, n_ten=2, n_zero=5, n_eight=3)]
    ablations = ["engine_zero_ablation_tiny", "engine_mean_ablation_tiny", "engine_path_ablation_tiny"]
    ablations += [f"{a}_8shot" for a in ablations]  # the same on 8-shot prompts
    assert [r["name"] for r in rows] == ["engine_fv_aie_tiny_10shot", "engine_exact_saliency_tiny_10shot", *ablations,
                                         "engine_steered_eval_tiny_8shot"]
    for r in rows:
        assert r["max_abs_diff"] < 1e-5, r["name"]  # inf where an accuracy (or a verdict) differs
        assert r["peak_memory_mb"] > 0 and r["peak_memory_scope"] in ("entry", "process so far")
        assert r["ratio"] == r["baseline_s"] / r["fast_s"]
        json.dumps(r)
    only = _engine_entries("tiny", tiny_model, v, splits, quick=True, only=("ablation",), n_ten=2, n_zero=5, n_eight=3)
    assert [r.name for r in only] == ablations
    assert {r.name: r.details["sets"] for r in only} == dict.fromkeys(ablations, 6)  # head_ablation's defaults: key + 5 random


def test_cli_bench_model_flag(capsys, monkeypatch, tiny_model):
    # `tvlens bench --model smollm2 [--quick]` runs the SmolLM2 entries (replaced here by the tiny model's, which is
    # what they run on the real model) and reports each entry's peak and the run's peak resident memory
    import tvlens.bench as bench
    from tvlens.cli._main import main

    calls = []

    def entries(*, quick=False):
        calls.append(quick)
        splits = tv.make_splits(tv.tasks.get("toy/antonym"))
        v = tv.TaskVector(torch.randn(1, tiny_model.cfg.d_model), (tv.Site(1, -1),), task="toy/antonym",
                          model_fingerprint=tv.fingerprint(tiny_model))
        return bench._engine_entries("tiny", tiny_model, v, splits, quick=quick, only=("ablation",), n_ten=2, n_zero=4, n_eight=2)

    import torch

    monkeypatch.setattr(bench, "smollm2_benchmarks", entries)
    assert main(["bench", "--model", "smollm2", "--quick", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert calls == [True] and [r["name"] for r in doc["benchmarks"]][0] == "engine_zero_ablation_tiny"
    assert doc["peak_rss_mb"] >= max(r["peak_memory_mb"] for r in doc["benchmarks"]) > 0
    assert main(["bench", "--only", "ablation"]) != 0  # --only picks engine entries of a real model
    assert "add --model smollm2" in capsys.readouterr().err
    got = []
    monkeypatch.setattr(bench, "smollm2_benchmarks", lambda *, quick=False, only=None: got.append((quick, only)) or entries(quick=quick))
    assert main(["bench", "--model", "smollm2", "--only", "saliency", "ablation", "--json"]) == 0
    assert got == [(False, ("saliency", "ablation"))]
    capsys.readouterr()
    assert main(["bench", "--model", "gpt2"]) != 0  # only the real model the entries are written for
    assert "invalid choice" in capsys.readouterr().err
    try:
        main(["bench", "--help"])
    except SystemExit:
        pass
    assert "--model {smollm2}" in capsys.readouterr().out


def test_chunked_naive_step_is_the_whole_minibatch_gradient(tiny_model):
    # the benchmark's naive step may run a few prompts per forward (memory); its gradient must be the minibatch's
    import torch

    from tvlens.bench import _chunked_step_fn
    from tvlens.ltv._objective import NaiveObjective

    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "train", k=2, n=10)
    tb = build_targets(tiny_model, ps)
    naive = NaiveObjective(tiny_model, tb, (tv.Site(1, -1),))
    theta = (0.3 * torch.randn(1, tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(2))).requires_grad_()
    idx = torch.tensor([7, 1, 4, 0, 9, 3, 5])
    whole = torch.autograd.grad(naive.loss(theta, idx)[0], [theta])[0]
    for rows in (1, 2, 3, 7):
        torch.testing.assert_close(_chunked_step_fn(naive, theta, idx, rows)(), whole, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(_chunked_step_fn(naive, theta, idx[:3], 1)(), whole)  # a different minibatch differs


def test_bench_ltv_step_records_its_chunking(cached_model):
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "train", k=2, n=8)
    d = bench_ltv_step("tiny", cached_model, build_targets(cached_model, ps), (tv.Site(1, -1),), batch=4, min_seconds=0.0,
                       naive_rows=3, prepare_rows=2).as_dict()
    assert d["naive_rows_per_forward"] == 3 and d["prepare_rows"] == 2
