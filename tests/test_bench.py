"""The benchmark harness runs and reports the documented JSON shape (no timing assertions)."""

import json

import tvlens as tv
from tvlens.bench import bench_ltv_step
from tvlens.ltv import build_targets


def test_bench_entry_shape(tiny_model):
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "train", k=2, n=8)
    tb = build_targets(tiny_model, ps)
    r = bench_ltv_step("tiny", tiny_model, tb, (tv.Site(1, -1),), batch=4, min_seconds=0.0)
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
