"""Geometry, transfer and composition: oracles on hand-made vectors and tiny random models
(a GQA one too), behaviour on the embedded model, the composed tasks and the CLI."""

from __future__ import annotations

import json
import math
import re
import warnings

import pytest
import torch

import tvlens as tv
from tests.conftest import assert_no_hooks_left, make_tiny_model
from tvlens.analysis import Composition, CosineMatrix, composition, train_vectors, transfer_matrix, vector_cosines
from tvlens.errors import ConfigError, TaskFormatError


def vec(values, task: str, layer: int = 1, seed: int = 0, model=None) -> tv.TaskVector:
    values = torch.as_tensor(values, dtype=torch.float32).reshape(1, -1)
    fp = tv.fingerprint(model) if model is not None else ""
    return tv.TaskVector(values, (tv.Site(layer, -1),), task=task, d_model=values.shape[1], model_fingerprint=fp,
                         meta={"config": {"seed": seed}})


# --- cosines ---------------------------------------------------------------------------------


def test_cosines_of_known_vectors():
    e = torch.eye(4)
    vs = [vec(e[0], "a", seed=0), vec(3 * e[0] + 0.1 * e[1], "a", seed=1), vec(e[2], "b", seed=0), vec(-e[2], "b", seed=1)]
    cm = vector_cosines(vs)
    expected = torch.nn.functional.cosine_similarity(torch.stack([v.values[0] for v in vs])[:, None], torch.stack([v.values[0] for v in vs])[None], dim=-1)
    assert torch.allclose(cm.cos, expected, atol=1e-6)
    assert cm.labels == ("a#0", "a#1", "b#0", "b#1")
    assert cm.cos[2, 3] == pytest.approx(-1.0) and cm.cos[0, 2] == pytest.approx(0.0)
    # within: pairs (a0,a1) twice and (b0,b1) twice; across: every a-b pair is orthogonal
    assert cm.within_mean == pytest.approx((float(expected[0, 1]) - 1.0) / 2, abs=1e-6)
    assert cm.across_mean == pytest.approx(0.0, abs=1e-6)
    s = cm.per_task().set_index("task")
    assert bool(s.loc["a", "separated"]) and not bool(s.loc["b", "separated"])  # b's seeds point opposite ways
    df = cm.to_frame()
    assert len(df) == 4 * 3 and set(df.columns) >= {"a", "b", "task_a", "task_b", "same_task", "cosine"}
    assert "Heatmap" in type(cm.plot().data[0]).__name__


def test_cosines_bad_inputs():
    with pytest.raises(ConfigError, match="share their sites"):
        vector_cosines([vec([1.0, 0, 0], "a"), vec([1.0, 0, 0], "b", layer=2)])
    with pytest.raises(ConfigError, match="zero"):
        vector_cosines([vec([1.0, 0, 0], "a"), vec([0.0, 0, 0], "b")])
    with pytest.raises(ConfigError, match="TaskVector"):
        vector_cosines([torch.ones(3)])
    one = vector_cosines([vec([1.0, 2.0], "a")])
    assert math.isnan(one.within_mean) and math.isnan(one.across_mean)


def test_cosine_matrix_round_trips(tmp_path):
    cm = vector_cosines([vec([1.0, 2.0], "a"), vec([2.0, -1.0], "b")])
    back = CosineMatrix.load(cm.save(tmp_path / "cm.json"))
    assert torch.equal(back.cos, cm.cos) and back.tasks == cm.tasks


# --- transfer and composition on tiny random models (oracles) --------------------------------


@pytest.fixture(scope="module", params=["mha", "gqa"])
def tiny(request, toy_tokenizer):
    if request.param == "gqa":  # 4 query heads sharing 2 key/value heads
        return make_tiny_model(toy_tokenizer, n_layers=2, d_model=32, n_heads=4, n_key_value_heads=2, seed=3)
    return make_tiny_model(toy_tokenizer, n_layers=2, d_model=32, n_heads=2, seed=1)


def test_transfer_oracle_on_tiny_models(tiny):
    tasks = ["toy/antonym", "toy/capital"]
    gen = torch.Generator().manual_seed(0)
    big = vec(torch.randn(32, generator=gen) * 50, "toy/antonym", model=tiny)
    zero = vec(torch.zeros(32), "toy/capital", model=tiny)
    tr = transfer_matrix(tiny, [big, zero], tasks, n=20)
    assert_no_hooks_left(tiny)
    # a zero vector changes nothing: its row is the zero-shot row
    assert torch.equal(tr.correct[1], tr.zero_shot_correct)
    # a non-zero one: the same count as evaluating it directly with tv.steering
    for j, name in enumerate(tasks):
        ps = tv.make_prompts(tv.make_splits(tv.tasks.get(name)), "test", k=0, n=20)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the vector's task is not the prompts' here, on purpose
            assert tr.correct[0, j] == tv.evaluate(tiny, ps, intervention=tv.steering(tiny, big, allow_other_fingerprint=True)).correct
        assert tr.n[j] == len(ps)
    assert tr.own.tolist() == [[True, False], [False, True]]
    df = tr.to_frame()
    assert len(df) == 4 and df["own"].sum() == 2


def test_composition_oracles_on_tiny_models(tiny):
    gen = torch.Generator().manual_seed(1)
    a = vec(torch.randn(32, generator=gen) * 40, "toy/antonym", model=tiny)
    minus_a = a.with_values(-a.values, task="toy/capitalize")
    res = composition(tiny, a, minus_a, "toy/capitalize+antonym", scales=(1.0, 2.0), shots=None, n=20)
    acc = res.accuracies
    assert res.conditions == ("zero-shot", "a", "b", "a+b", "2(a+b)")
    assert acc["a+b"] == acc["zero-shot"] == acc["2(a+b)"]  # a + (-a) = 0
    assert res.cos_ab == pytest.approx(-1.0)
    same = a.with_values(a.values.clone(), task="toy/capitalize")
    res2 = composition(tiny, a, same, "toy/capitalize+antonym", scales=(0.5,), shots=None, n=20)
    assert res2.correct[res2.conditions.index("0.5(a+b)")] == res2.correct[res2.conditions.index("a")]  # (a + a) / 2 = a
    assert res2.matches_a[res2.conditions.index("0.5(a+b)")] == res2.matches_a[res2.conditions.index("a")]
    assert_no_hooks_left(tiny)


# --- composed tasks --------------------------------------------------------------------------


def test_composed_tasks_follow_the_world():
    from tvlens.toy._world import world

    w = world()
    ant = dict((i[0], o) for i, o in w["antonym"].table)
    succ = dict((i[0], o) for i, o in w["successor"].table)
    t = tv.tasks.get("toy/capitalize+antonym")
    assert len(t) == len(ant) and all(e.output == ant[e.inputs["x"]].capitalize() for e in t.examples)
    t2 = tv.tasks.get("toy/successor+antonym")
    assert len(t2) == len(succ) and all(e.output == ant[succ[e.inputs["x"]]] for e in t2.examples)
    real = tv.tasks.get("capitalize+antonym")
    base = {e.inputs["x"]: e.output for e in tv.tasks.get("antonym").examples}
    assert len(real) == len(base) and all(e.output == base[e.inputs["x"]][0].upper() + base[e.inputs["x"]][1:] for e in real.examples)
    assert "toy/capitalize+antonym" not in tv.tasks.toy_task_names()  # not a benchmark task


def test_compose_refuses_classification():
    from tvlens.tasks._composed import compose

    with pytest.raises(TaskFormatError, match="compose"):
        compose("x", tv.tasks.get("toy/sentiment"), tv.tasks.get("toy/antonym"))


# --- behaviour on the embedded model ---------------------------------------------------------


@pytest.fixture(scope="module")
def toy_vectors(toy_model):
    return train_vectors(toy_model, ["toy/antonym", "toy/capitalize", "toy/capital"], seeds=(0, 1), layer=2)


def test_toy_clusters_and_transfer(toy_model, toy_vectors):
    cm = vector_cosines(toy_vectors)
    assert cm.tasks == ("toy/antonym",) * 2 + ("toy/capitalize",) * 2 + ("toy/capital",) * 2
    assert not torch.equal(toy_vectors[0].values, toy_vectors[1].values)  # the seeds do differ
    assert cm.within_mean > 0.9 and abs(cm.across_mean) < 0.5
    assert cm.per_task()["separated"].all()
    tr = transfer_matrix(toy_model, toy_vectors)
    assert tr.tasks == ("toy/antonym", "toy/capitalize", "toy/capital")
    assert tr.own_mean > 0.8 and tr.off_mean < 0.3


def test_toy_composition_reports_which_task_wins(toy_model, toy_vectors):
    res = composition(toy_model, toy_vectors[0], toy_vectors[2], "toy/capitalize+antonym")
    assert isinstance(res, Composition) and res.n > 0
    i = res.conditions.index
    # each vector alone does its own task on the composed task's inputs
    assert res.matches_a[i("a")] / res.n > 0.8 and res.matches_b[i("b")] / res.n > 0.8
    df = res.to_frame()
    assert list(df.columns[:5]) == ["condition", "accuracy", "ci_low", "ci_high", "n"]
    assert len(res.plot().data) == 3


def test_cli_geometry_json(capsys, tmp_path):
    from tvlens.cli import main

    html = tmp_path / "g.html"
    rc = main(["analyze", "geometry", "--tasks", "toy/antonym", "toy/capitalize", "--seeds", "0", "1", "--layer", "1",
               "--json", "--html", str(html), "--save-vectors", str(tmp_path / "v")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    assert out["layer"] == 1 and len(out["cosine"]["labels"]) == 4
    assert out["composition"]["task"] == "toy/capitalize+antonym" and out["composition"]["a"] == "toy/antonym"
    assert len(out["transfer"]["accuracy"]) == 4 and html.is_file()
    page = html.read_text()
    assert page.count("<h2>") == 3 and not re.search(r"<script[^>]*\bsrc=", page)  # offline: nothing fetched
    # the saved vectors give the same cosines again, without training
    rc = main(["analyze", "geometry", "--vectors", *out["saved_vectors"], "--composed", "none", "--json"])
    again = json.loads(capsys.readouterr().out)
    assert rc == 0 and again["cosine"]["labels"] == out["cosine"]["labels"]
    assert again["cosine"]["matrix"] == out["cosine"]["matrix"] and again["composition"] is None


def test_cli_geometry_refuses_an_unknown_composition_before_training(capsys, monkeypatch):
    import tvlens.analysis
    from tvlens.cli import main

    def no_training(*a, **k):
        raise AssertionError("trained before checking --composed")

    monkeypatch.setattr(tvlens.analysis, "train_vectors", no_training)  # what the command calls
    rc = main(["analyze", "geometry", "--tasks", "toy/antonym", "--composed", "toy/antonym", "--json"])
    err = json.loads(capsys.readouterr().out)["error"]
    assert rc == 2 and err["type"] == "ConfigError" and "--parts" in err["message"]


def test_composition_keeps_per_query_predictions(toy_model, toy_vectors, tmp_path):
    res = composition(toy_model, toy_vectors[0], toy_vectors[2], "toy/capitalize+antonym", shots=None)
    df = res.predictions(toy_model)
    assert list(df.columns) == ["query", "gold", "zero-shot", "a", "b", "a+b", "0.5(a+b)"] and len(df) == res.n
    assert int((df["a+b"] == df["gold"]).sum()) == int(res.correct[res.conditions.index("a+b")])
    back = Composition.load(res.save(tmp_path / "c.json"))
    assert torch.equal(back.predicted, res.predicted) and back.queries == res.queries
