"""The scaled OV reconstruction: oracles (α = 1 is ov_reconstruction's / ov_layer_reconstruction's counts, α = 0 is
zero-shot) on the tiny models and the embedded model, the choice of α on validation queries, failures, and its
presence in the CLI and the report with no edit outside its own file."""

from __future__ import annotations

import json

import pytest
import torch

import tvlens as tv
from tests.conftest import TINY_ARCHS, assert_no_hooks_left, make_tiny_model
from tvlens.analysis.ov import ov_reconstruction
from tvlens.analysis.ov_layers import ov_layer_reconstruction
from tvlens.analysis.ov_scale import CONDITIONS, VARIANTS, OVScale, check_alphas, choose_alpha, ov_scale
from tvlens.errors import ConfigError

TASK = "toy/sentiment"
ALPHAS = (0.0, 0.5, 1.0, 4.0)


def _splits():
    return tv.make_splits(tv.tasks.get(TASK), seed=0)


def _check_oracles(model, vector, test, val, ln):
    res = ov_scale(model, vector, prompts=test, val_prompts=val, alphas=ALPHAS, ln=ln)
    assert isinstance(res, OVScale) and res.conditions == CONDITIONS and res.variants == VARIANTS
    assert res.n == len(test) and res.n_val == len(val) and res.alphas == ALPHAS
    one, zero = ALPHAS.index(1.0), ALPHAS.index(0.0)
    for ps, counts, z, ltv in ((test, res.test_correct, res.correct[0], res.correct[1]),
                               (val, res.val_correct, res.val_zero_shot, res.val_ltv)):
        rec = ov_reconstruction(model, vector, prompts=ps, ln=ln)
        lay = ov_layer_reconstruction(model, vector, prompts=ps, heads=[(vector.sites[0].layer, 0)], ln=ln)
        want = [rec.correct[rec.conditions.index("variant_a")], rec.correct[rec.conditions.index("variant_a_weighted")],
                lay.correct[lay.conditions.index("all_heads")], lay.correct[lay.conditions.index("all_heads_weighted")]]
        assert counts[:, one].tolist() == [int(w) for w in want]  # α = 1: the unscaled reconstructions, exactly
        assert counts[:, zero].tolist() == [int(z)] * len(VARIANTS)  # α = 0: zero-shot
        assert int(z) == int(rec.correct[rec.conditions.index("zero_shot")]) and int(ltv) == int(rec.correct[rec.conditions.index("ltv")])
    return res


@pytest.mark.parametrize("arch", sorted(TINY_ARCHS))
@pytest.mark.parametrize("ln", ["actual", "folded"])
def test_oracles_on_tiny_models(toy_tokenizer, arch, ln):
    model = make_tiny_model(toy_tokenizer, seed=2, **TINY_ARCHS[arch])
    theta = 3.0 * torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    v = tv.TaskVector(theta, (tv.Site(1, -1),), task=TASK, model_fingerprint=tv.fingerprint(model))
    s = _splits()
    _check_oracles(model, v, tv.make_prompts(s, "test", k=0, n=6), tv.make_prompts(s, "val", k=0, n=5), ln)
    assert_no_hooks_left(model)


@pytest.fixture(scope="module")
def toy_vector(toy_model):
    return tv.train_ltv(toy_model, TASK, layers=[2], splits=_splits(), config=tv.LTVConfig(seed=0), progress=False).vector


def test_oracles_on_the_embedded_model_and_the_choice_of_alpha(toy_model, toy_vector):
    s = _splits()
    res = _check_oracles(toy_model, toy_vector, tv.make_prompts(s, "test", k=0), tv.make_prompts(s, "val", k=0), "actual")
    assert res.accuracy("ltv") > res.accuracy("zero_shot")  # the vector works: the oracles are not vacuous
    assert int(res.test_correct.sum()) > 0
    for i, v in enumerate(VARIANTS):
        b = choose_alpha(res.alphas, res.val_correct[i].tolist())
        assert res.best(v) == b  # chosen on the validation queries ...
        assert int(res.correct[CONDITIONS.index(f"{v}_best")]) == int(res.test_correct[i, res.alphas.index(b)])  # ... read on test
        assert res.curve(v, "val")[res.alphas.index(b)] == max(res.curve(v, "val"))
    by_name = ov_scale(toy_model, toy_vector, TASK, alphas=ALPHAS)  # the task's own splits (the vector's split seed)
    assert torch.equal(by_name.correct, res.correct) and by_name.n_val == len(s.val)
    assert "validation queries" in res.text() and "OVScale" in repr(res)


def test_choose_alpha_and_the_grid():
    assert choose_alpha((0.0, 0.5, 1.0, 4.0), [3, 5, 5, 1]) == 1.0  # a tie goes to the α nearest 1
    assert choose_alpha((0.0, 0.5, 2.0, 8.0), [3, 5, 5, 1]) == 0.5  # |log 0.5| = |log 2|: the smaller
    assert choose_alpha((0.0, 2.0), [4, 4]) == 2.0  # α = 0 is the farthest
    assert choose_alpha((0.0, 1.0, 8.0), [0, 1, 6]) == 8.0
    assert check_alphas([4, 0, 2, 2]) == (0.0, 1.0, 2.0, 4.0)  # sorted, unique, 1 added
    with pytest.raises(ConfigError, match=">= 0"):
        check_alphas([1, -2])
    with pytest.raises(ConfigError, match="finite"):
        check_alphas([float("nan")])
    with pytest.raises(ConfigError, match="sequence"):
        check_alphas(3)


def test_bad_inputs(toy_model, toy_vector):
    other = tv.TaskVector(toy_vector.values, (tv.Site(2, -2),), model_fingerprint=toy_vector.model_fingerprint)
    with pytest.raises(ConfigError, match="last position"):
        ov_scale(toy_model, other, TASK)
    with pytest.raises(ConfigError, match=">= 0"):
        ov_scale(toy_model, toy_vector, TASK, alphas=(-1.0,))
    with pytest.raises(ConfigError, match="ln"):
        ov_scale(toy_model, toy_vector, TASK, ln="none")
    res = ov_scale(toy_model, toy_vector, TASK, n=8, n_val=6, alphas=(1.0,))
    with pytest.raises(ConfigError, match="readings"):
        res.best("variant_b")
    with pytest.raises(ConfigError, match="split"):
        res.curve("variant_a", "train")


def test_registered_in_the_cli_and_the_report(toy_model, toy_vector, capsys, tmp_path):
    from tvlens.analysis import analyses
    from tvlens.cli._main import main
    from tvlens.viz.report import build_report

    assert "ov_scale" in [a.name for a in analyses()]
    path = toy_vector.save(tmp_path / "v.safetensors")
    assert main(["analyze", "ov_scale", "--task", TASK, "--vector", str(path), "--n", "12", "--n-val", "8",
                 "--alphas", "0", "2", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    (res,) = p["results"]
    assert p["analysis"] == "ov_scale" and p["options"] == {"alphas": [0.0, 2.0], "n_val": 8, "ln": "actual"}
    assert list(res["conditions"]) == list(CONDITIONS) and res["n"] == 12 and res["n_val"] == 8
    assert res["alphas"] == [0.0, 1.0, 2.0] and len(res["best_alpha"]) == len(VARIANTS)
    direct = ov_scale(toy_model, toy_vector, TASK, n=12, n_val=8, alphas=(0.0, 2.0))
    assert [res["conditions"][c]["correct"] for c in CONDITIONS] == direct.correct.tolist()  # the CLI's numbers
    rep = build_report(toy_model, TASK, sections=["ov_scale"], n=12, progress=False)
    assert rep.sections[0].ok and rep.sections[0].group == "Heads", rep.sections[0].error
    assert isinstance(rep.sections[0].results[0], OVScale)
