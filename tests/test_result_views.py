"""The per-layer views of layered results, against their own counts: ``LensResult.at_layer`` and
``summary``, ``RotationStretch.at_layer`` and ``accuracy_frame``, ``Composition`` on the
ConditionAccuracy base. Hand-made counts are the oracle (no model needed)."""

from __future__ import annotations

import math

import pytest
import torch

from tvlens._result import ConditionAccuracy
from tvlens.analysis import Composition, LensResult, RotationStretch
from tvlens.analysis.rotation import ROTATION_CONDITIONS
from tvlens.errors import ConfigError
from tvlens.stats import wilson_interval


@pytest.fixture
def lens():
    correct = torch.tensor([[0, 1, 3], [2, 5, 9], [1, 4, 8]])  # condition x layer
    label = torch.tensor([[1, 2, 4], [3, 6, 10], [2, 5, 9]])
    return LensResult("toy/antonym", ("zero-shot", "8-shot ICL", "θ@L1"), (0, 1, 2), correct, label,
                      torch.rand(3, 3), "span", 10, torch.tensor([5, 6]))


def test_lens_at_layer_reads_its_column(lens):
    for j, layer in enumerate(lens.layers):
        for what, counts in (("accuracy", lens.correct), ("label_accuracy", lens.label_correct)):
            view = lens.at_layer(layer, what)
            assert isinstance(view, ConditionAccuracy) and view.n == 10 and view.conditions == lens.conditions
            for i, c in enumerate(lens.conditions):
                assert view.accuracy(c) == int(counts[i, j]) / 10
                assert view.interval(c) == wilson_interval(int(counts[i, j]), 10)
    with pytest.raises(ConfigError, match="the layers are"):
        lens.at_layer(7)
    with pytest.raises(ConfigError, match="label_accuracy"):
        lens.at_layer(1, "alignment")


def test_lens_summary_is_the_final_layer(lens):
    s = lens.summary()
    assert s["accuracy"] == {"zero-shot": 0.3, "8-shot ICL": 0.9, "θ@L1": 0.8}
    assert s["ci95"]["θ@L1"] == list(wilson_interval(8, 10)) and s["n"] == 10
    assert s["icl_beats_zero_shot_layer"] == lens.icl_beats_zero_shot_layer == 0  # 2 > 0 already at layer 0
    frame = lens.to_frame()
    row = frame[(frame.condition == "8-shot ICL") & (frame.layer == 1)].iloc[0]
    assert (row.correct, row.accuracy, row.ci_low) == (5, 0.5, pytest.approx(wilson_interval(5, 10)[0]))


@pytest.fixture
def rotation():
    L, C = 2, len(ROTATION_CONDITIONS)
    correct = torch.tensor([[6, 5, 4, 1], [9, 3, 8, 1]])
    metrics = {m: torch.arange(L, dtype=torch.float64) for m in ("fit_r2", "cos_theta_Qtheta", "alignment_theta",
                                                                  "alignment_Qtheta", "q_minus_i", "q_minus_i_rel", "theta_norm")}
    assert correct.shape == (L, C)
    return RotationStretch("toy/category", (1, 3), correct, torch.tensor([10, 12]), decoded_theta=("a", "b"),
                           decoded_Qtheta=("c", "d"), n_copies=(64, 64), seconds=(1.0, 2.0), transition_layer=3,
                           icl_layer=None, threshold=0.5, definition="span", **metrics)


def test_rotation_at_layer_and_accuracy_frame(rotation):
    view = rotation.at_layer(3)
    assert view.n == 12 and view.accuracy("injected") == 9 / 12 and view.accuracy("zero_shot") == 1 / 12
    with pytest.raises(ConfigError, match="the layers are"):
        rotation.at_layer(2)
    frame = rotation.accuracy_frame()
    assert list(frame.columns) == ["layer", "condition", "accuracy", "ci_low", "ci_high", "n", "correct"]
    assert len(frame) == 2 * len(ROTATION_CONDITIONS)
    for _, r in frame.iterrows():
        i, c = rotation.layers.index(r.layer), ROTATION_CONDITIONS.index(r.condition)
        k, n = int(rotation.correct[i, c]), int(rotation.n[i])
        assert (r.correct, r.n) == (k, n) and r.accuracy == pytest.approx(k / n)
        assert (r.ci_low, r.ci_high) == pytest.approx(wilson_interval(k, n))
    rows = rotation.rows
    assert rows[0]["reconstructed_acc"] == pytest.approx(5 / 10) and rows[1]["n_test"] == 12
    assert rotation.payload()["layers"][1]["conditions"]["mean_shift"]["correct"] == 8


def test_composition_is_a_condition_accuracy(tmp_path):
    conds = ("zero-shot", "a", "b", "a+b", "0.5(a+b)")
    r = Composition("toy/capitalize+antonym", conds, torch.tensor([1, 2, 3, 10, 6]), 10, task_a="toy/antonym",
                    task_b="toy/capitalize", cos_ab=0.1, scales=(1.0, 0.5), matches_a=torch.tensor([0, 8, 0, 1, 2]),
                    matches_b=torch.tensor([-1, -1, -1, -1, -1]))
    assert isinstance(r, ConditionAccuracy)
    assert r.accuracy("a+b") == r.at("a+b") == r.accuracies["a+b"] == 1.0
    assert r.best_sum == "a+b" and r.sum_beats_each  # 10/10's interval lies above 3/10's
    df = r.to_frame()
    assert list(df.columns) == ["condition", "accuracy", "ci_low", "ci_high", "n", "correct", "answers_as_a", "answers_as_b"]
    assert df.answers_as_a.tolist() == [0.0, 0.8, 0.0, 0.1, 0.2] and all(math.isnan(x) for x in df.answers_as_b)
    assert r.summary()["accuracy"]["0.5(a+b)"] == 0.6 and r.payload()["conditions"]["b"]["correct"] == 3
    assert not Composition("t", conds, torch.tensor([1, 2, 3, 9, 6]), 10).sum_beats_each  # [0.60, 0.98] vs b's [0.11, 0.60]
    assert len(r.plot().data) == 2  # accuracy, answers as a (b is unknown)
    back = Composition.load(r.save(tmp_path / "c.json"))
    assert back.accuracies == r.accuracies and back.task_b == "toy/capitalize"
    with pytest.raises(ConfigError, match="unknown condition"):
        r.accuracy("c")
