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
