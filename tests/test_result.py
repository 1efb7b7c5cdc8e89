"""The result convention (tvlens._result): frozen, identity eq/hash, short repr, frames, plots, JSON files."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import tvlens as tv
from tests.test_vector import make_vector
from tvlens._result import Result
from tvlens.errors import CheckpointError


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Scores(Result):
    name: str
    values: torch.Tensor
    per_layer: dict
    sites: tuple


def all_result_classes():
    out, todo = [], list(Result.__subclasses__())
    while todo:
        c = todo.pop()
        out.append(c)
        todo += c.__subclasses__()
    return out


@pytest.fixture(scope="module")
def eval_result(tiny_model):
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/sentiment")), "test", k=1, seed=0)
    return tv.evaluate(tiny_model, ps)


@pytest.fixture(scope="module")
def ltv_result(tiny_model):
    from tvlens.ltv._train import LTVResult

    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    history = ({"epoch": 0, "step": 4, "train_loss": 2.5, "val_accuracy": 0.25},
               {"epoch": 1, "step": 8, "train_loss": 1.25, "val_accuracy": 0.5})
    return LTVResult(make_vector(tiny_model, sites=((0, -1), (1, 2))), history, 0.5, 1, 8, 1.5, splits, 0)


def test_library_results_follow_the_convention():
    import tvlens.ltv  # noqa: F401  (registers LTVResult)

    classes = all_result_classes()
    names = {c.__name__ for c in classes}
    assert {"EvalResult", "LTVResult", "BaselineTable"} <= names
    for c in classes:
        if c.__module__.startswith("tvlens."):
            params = c.__dataclass_params__
            assert params.frozen and not params.eq, c


def test_eq_and_hash_are_identity_not_elementwise(eval_result):
    twin = dataclasses.replace(eval_result)  # same tensors, another object
    assert eval_result == eval_result and eval_result != twin  # no "ambiguous truth value" error
    assert len({eval_result, twin, eval_result}) == 2 and hash(eval_result) == hash(eval_result)
    with pytest.raises(dataclasses.FrozenInstanceError):
        eval_result.accuracy = 1.0


def test_eval_result_round_trips_through_json(eval_result, tmp_path):
    back = tv.EvalResult.from_json(eval_result.to_json())
    for f in dataclasses.fields(eval_result):
        a, b = getattr(eval_result, f.name), getattr(back, f.name)
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b) and a.dtype == b.dtype, f.name
        else:
            assert a == b, f.name
    path = eval_result.save(tmp_path / "sub" / "eval.json")
    assert repr(tv.EvalResult.load(path)) == repr(eval_result)
    assert not list((tmp_path / "sub").glob(".*.tmp"))


def test_ltv_result_round_trips_with_its_vector_and_splits(ltv_result):
    back = tv.LTVResult.from_json(ltv_result.to_json())
    assert torch.equal(back.vector.values, ltv_result.vector.values)
    assert back.vector.sites == ltv_result.vector.sites and isinstance(back.vector.sites[0], tv.Site)
    assert back.vector.meta == ltv_result.vector.meta
    assert back.splits == ltv_result.splits and back.splits.task.name == "toy/antonym"
    assert back.history == ltv_result.history and back.val_accuracy == 0.5


def test_baseline_table_round_trips(eval_result):
    table = tv.BaselineTable((eval_result, eval_result))
    back = tv.BaselineTable.from_json(table.to_json())
    assert back.to_frame().equals(table.to_frame())
    with pytest.raises(CheckpointError, match="not a BaselineTable"):
        tv.BaselineTable.from_json(eval_result.to_json())


def test_a_custom_result_round_trips_exotic_fields():
    s = Scores("x", torch.arange(6, dtype=torch.bfloat16).reshape(2, 3) / 3, {1: torch.ones(2, dtype=torch.bool)},
               (tv.Site(1, -1), (2, "a")))
    back = Scores.from_json(s.to_json())
    assert torch.equal(back.values, s.values) and back.values.dtype == torch.bfloat16
    assert list(back.per_layer) == [1] and torch.equal(back.per_layer[1], s.per_layer[1])
    assert back.sites == s.sites


def test_reprs_are_short_and_html_has_the_table(eval_result, ltv_result):
    big = Scores("y" * 500, torch.zeros(1000, 1000), {str(i): i for i in range(100)}, tuple(range(50)))
    for r in (eval_result, ltv_result, tv.BaselineTable((eval_result,)), big):
        assert len(repr(r)) <= 200, repr(r)
        assert repr(r).startswith(type(r).__name__)
        assert "<table" in r._repr_html_()
    assert "f32[1000,1000]" in repr(big) and "tensor(" not in repr(big)


def test_frames_and_plots(eval_result, ltv_result):
    import plotly.graph_objects as go

    assert len(eval_result.to_frame()) == eval_result.n
    assert list(ltv_result.to_frame()["epoch"]) == [0, 1]
    for r in (eval_result, ltv_result, tv.BaselineTable((eval_result,)), Scores("z", torch.zeros(1), {}, ())):
        assert isinstance(r.plot(), go.Figure)


def test_files_from_elsewhere_are_refused(tmp_path):
    bad = {"format": "tvlens-result/1", "type": "tvlens.evaluate:EvalResult",
           "fields": {"task": {"__dataclass__": "os:system", "fields": {}}}}
    with pytest.raises(CheckpointError, match="only tvlens classes"):
        tv.EvalResult.from_json(json.dumps(bad))
    bad["type"] = "subprocess:Popen"
    with pytest.raises(CheckpointError, match="only tvlens classes"):
        Result.from_json(json.dumps(bad))
    with pytest.raises(CheckpointError, match="not a tvlens result"):
        Result.from_json("{}")
    with pytest.raises(CheckpointError, match="no result file"):
        Result.load(tmp_path / "missing.json")


def test_condition_accuracy_base(tmp_path):
    import torch

    from tvlens._result import ConditionAccuracy
    from tvlens.errors import ConfigError
    from tvlens.stats import wilson_interval

    r = ConditionAccuracy("demo", ("zero_shot", "ltv"), torch.tensor([2, 7]), 8)
    assert r.accuracy("ltv") == 7 / 8 and r.interval("ltv") == wilson_interval(7, 8)
    df = r.to_frame()
    assert list(df.condition) == ["zero_shot", "ltv"] and list(df.correct) == [2, 7]
    p = r.payload()
    assert p["conditions"]["zero_shot"] == {"accuracy": 0.25, "correct": 2, "ci95": list(wilson_interval(2, 8))}
    assert "ltv" in r.text() and "0.875" in r.text() and len(r.plot().data) == 1
    back = ConditionAccuracy.load(r.save(tmp_path / "r.json"))
    assert torch.equal(back.correct, r.correct) and back.conditions == r.conditions
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic writer leaves no temporary file
    with pytest.raises(ConfigError, match="one count per condition"):
        ConditionAccuracy("demo", ("a",), torch.tensor([1, 2]), 8)
    with pytest.raises(ConfigError, match="0..n"):
        ConditionAccuracy("demo", ("a",), torch.tensor([9]), 8)
    with pytest.raises(ConfigError, match="unknown condition"):
        r.accuracy("nope")
