"""Wilson intervals: reference values, edge cases, and their place in results, frames and JSON."""

import math

import pytest

import tvlens as tv
from tvlens.errors import ConfigError
from tvlens.stats import accuracy_interval, wilson_interval


@pytest.mark.parametrize("k,n,lo,hi", [
    (20, 25, 0.6087, 0.9114),  # worked by hand from the closed form
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (1, 13, 0.0137, 0.3331),
    (50, 100, 0.4038, 0.5962),
])
def test_reference_values(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert (round(a, 4), round(b, 4)) == (lo, hi)


def test_interval_contains_the_estimate_and_narrows_with_n():
    widths = []
    for n in (13, 25, 100, 400):
        a, b = accuracy_interval(0.8, n)
        assert a <= 0.8 <= b
        widths.append(b - a)
    assert widths == sorted(widths, reverse=True)


@pytest.mark.parametrize("k,n", [(3, 2), (-1, 5), (0, 0), (1.0, 5), (True, 5)])
def test_bad_counts(k, n):
    with pytest.raises(ConfigError):
        wilson_interval(k, n)


def test_eval_result_and_frames_carry_the_interval(toy_model):
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    res = tv.evaluate(toy_model, tv.make_prompts(splits, "test", k=0))
    assert res.ci95 == wilson_interval(res.correct, res.n) and res.correct == round(res.accuracy * res.n)
    assert res.ci_low <= res.accuracy <= res.ci_high and "95% CI" in repr(res)
    s = res.summary()
    assert (s["ci_low"], s["ci_high"]) == res.ci95
    df = tv.icl_baselines(toy_model, ["toy/antonym"], shots=(0, 1)).to_frame()
    assert {"ci_low", "ci_high"} <= set(df.columns) and (df["ci_low"] <= df["accuracy"]).all()


def test_ltv_result_interval_and_frame(tiny_model):
    cfg = tv.LTVConfig(batch_size=8, epoch_size=16, max_epochs=2, n_train=16, n_val=10)
    res = tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=cfg, progress=False)
    assert res.n_val == 10 and res.val_ci95 == accuracy_interval(res.val_accuracy, 10)
    df = res.to_frame()
    assert (df["val_ci_low"] <= df["val_accuracy"]).all() and (df["val_accuracy"] <= df["val_ci_high"]).all()
    assert not math.isnan(df["val_ci_high"].iloc[0])
