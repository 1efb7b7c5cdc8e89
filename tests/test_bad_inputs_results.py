"""Result files (issue 22): every damaged, foreign or edited file is a CheckpointError naming the file
and what is wrong, arrays are checked against the class's declared shapes before it is built, and
saves are atomic, umask-mode, strict JSON with non-finite numbers read back exactly."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest
import torch

from tvlens._result import ConditionAccuracy, Result
from tvlens.analysis.saliency import HeadSaliency
from tvlens.errors import CheckpointError


def _sal():
    scores = torch.rand(5, 4)
    scores[0] = float("nan")  # layers before the injection layer are not scored
    return HeadSaliency(scores, scores.clone(), "grad", 1, "toy/antonym", 8, 0.5)


@pytest.fixture
def saved(tmp_path):
    r = _sal()
    p = r.save(tmp_path / "sal.json")
    return r, p


def _edit(p, fn):
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def test_strict_json_and_nonfinite_round_trip(saved):
    r, p = saved
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(c)))  # a strict reader accepts it
    back = HeadSaliency.load(p)
    assert torch.equal(back.scores.isnan(), r.scores.isnan())
    assert torch.equal(torch.nan_to_num(back.scores, 7.0), torch.nan_to_num(r.scores, 7.0))


def test_scalar_nan_and_inf_fields_round_trip(tmp_path):
    r = HeadSaliency(torch.zeros(2, 2), torch.zeros(2, 2), "grad", 0, "t", 1, float("nan"))
    back = HeadSaliency.load(r.save(tmp_path / "a.json"))
    assert math.isnan(back.p_gold)
    r = HeadSaliency(torch.tensor([[float("inf"), -float("inf")], [0.0, 1.0]]), torch.zeros(2, 2), "grad", 0, "t", 1, float("-inf"))
    back = HeadSaliency.load(r.save(tmp_path / "b.json"))
    assert back.p_gold == -math.inf and back.scores[0, 0] == math.inf and back.scores[0, 1] == -math.inf


def test_save_mode_follows_the_umask_like_vectors(tmp_path):
    old = os.umask(0o022)
    try:
        p = _sal().save(tmp_path / "m.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


DAMAGE = {
    "binary": (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "not UTF-8"),
    "truncated": (lambda p: p.write_text(p.read_text()[:50]), "invalid JSON"),
    "empty": (lambda p: p.write_text(""), "invalid JSON"),
    "NaN literal": (lambda p: p.write_text(p.read_text().replace('"p_gold": 0.5', '"p_gold": NaN')), "non-standard literal NaN"),
    "a list": (lambda p: p.write_text("[1, 2]"), "not a tvlens result"),
    "no type": (lambda p: _edit(p, lambda d: d.pop("type")), "'type' must be a class name"),
    "fields a list": (lambda p: _edit(p, lambda d: d.update(fields=[1])), "'fields' an object"),
    "foreign class": (lambda p: _edit(p, lambda d: d.update(type="os:system")), "only tvlens classes"),
    "unknown class": (lambda p: _edit(p, lambda d: d.update(type="tvlens.analysis.saliency:Nope")), "unknown class"),
    "another result": (lambda p: _edit(p, lambda d: d.update(type="tvlens._result:ConditionAccuracy")), "not a HeadSaliency"),
    "missing field": (lambda p: _edit(p, lambda d: d["fields"].pop("scores")), r"lacks fields \['scores'\]"),
    "unknown field": (lambda p: _edit(p, lambda d: d["fields"].update(extra=1)), r"unknown fields \['extra'\]"),
    "tensor without data": (lambda p: _edit(p, lambda d: d["fields"]["scores"]["__tensor__"].pop("data")), "lacks dtype, shape or data"),
    "too few numbers": (lambda p: _edit(p, lambda d: d["fields"]["scores"]["__tensor__"]["data"].pop()), "needs 20 numbers, got 19"),
    "bad dtype": (lambda p: _edit(p, lambda d: d["fields"]["scores"]["__tensor__"].update(dtype="complex64")), "unknown tensor dtype"),
    "negative shape": (lambda p: _edit(p, lambda d: d["fields"]["scores"]["__tensor__"].update(shape=[-5, -4])), "integers >= 0"),
    "text in data": (lambda p: _edit(p, lambda d: d["fields"]["scores"]["__tensor__"]["data"].__setitem__(5, "x")), "holds 'x'"),
    "bad nan mask": (lambda p: _edit(p, lambda d: d["fields"]["scores"]["__tensor__"]["nonfinite"].__setitem__(0, [999, "nan"])), "non-finite mask"),
    "int dtype for floats": (lambda p: _edit(p, lambda d: d["fields"]["scores"]["__tensor__"].update(
        dtype="int64", data=[1] * 20, nonfinite=[])), "must hold float numbers"),
    "wrong rank": (lambda p: _edit(p, lambda d: d["fields"]["scores"]["__tensor__"].update(shape=[20])), r"shape \[layer, head\]"),
    "big fake scores": (lambda p: _edit(p, lambda d: d["fields"]["scores"].update(__tensor__={
        "dtype": "float32", "shape": [300, 300], "data": [0.5] * 90000})), "attribution has 5 entries along 'layer', but scores has 300"),
    "bad float code": (lambda p: _edit(p, lambda d: d["fields"].update(p_gold={"__float__": "huge"})), "unknown float code"),
    "mode a number": (lambda p: _edit(p, lambda d: d["fields"].update(mode=3)), "HeadSaliency"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_result_file_is_a_checkpoint_error_naming_it(saved, case):
    _, p = saved
    damage, match = DAMAGE[case]
    damage(p)
    before = p.read_bytes()
    with pytest.raises(CheckpointError, match=match) as e:
        HeadSaliency.load(p)
    assert "sal.json" in str(e.value)
    assert p.read_bytes() == before


def test_condition_counts_must_match_the_conditions(tmp_path):
    p = ConditionAccuracy("t", ("a", "b"), torch.tensor([1, 2]), 3).save(tmp_path / "c.json")
    _edit(p, lambda d: d["fields"]["correct"]["__tensor__"].update(shape=[3], data=[1, 2, 3]))
    with pytest.raises(CheckpointError, match="'condition', but its other fields give 2"):
        ConditionAccuracy.load(p)


def test_a_missing_file_and_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no result file"):
        Result.load(tmp_path / "nope.json")
    with pytest.raises(CheckpointError, match="no result file"):
        Result.load(tmp_path)
