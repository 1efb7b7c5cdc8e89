"""`tvlens analyze heads`: the JSON document, the text, the dashboard file and the failures."""

from __future__ import annotations

import json
import re

import pytest

import tvlens as tv
from tvlens.cli._main import main

TASK = "toy/antonym"


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory, toy_model):
    task = tv.tasks.get(TASK)
    res = tv.train_ltv(toy_model, task, layers=[2], splits=tv.make_splits(task, seed=0), config=tv.LTVConfig(seed=0),
                       progress=False)
    return res.vector.save(tmp_path_factory.mktemp("vec") / "antonym.safetensors")


def test_json_with_a_vector_and_the_dashboard(capsys, tmp_path, vector_file):
    page = tmp_path / "heads.html"
    code, out, _ = _run(capsys, "analyze", "heads", "--task", TASK, "--vector", str(vector_file), "--n", "12",
                        "--fraction", "0.25", "--n-random", "3", "--json", "--html", str(page))
    assert code == 0, out
    p = json.loads(out)
    assert p["task"] == TASK and p["n_queries"] == 12 and p["vector"]["sites"] == ["L2@-1"] and p["injection_layer"] == 2
    heads = p["heads"]
    assert [(h["layer"], h["head"]) for h in heads] == [(a, b) for a in range(2, 5) for b in range(4)]  # heads reading θ
    for h in heads:
        assert {"layer", "head", "saliency", "exact_effect", "ov_norm", "sink_mass", "key"} <= set(h)
        assert isinstance(h["saliency"], float) and isinstance(h["key"], bool)
    key = sorted((h["layer"], h["head"]) for h in heads if h["key"])
    assert len(key) == 3 and key == sorted(map(tuple, p["key_heads"]))
    top = sorted(heads, key=lambda h: -h["saliency"])[:3]
    assert sorted((h["layer"], h["head"]) for h in top) == key  # key heads = the most salient quarter
    assert -1 <= p["spearman_saliency_vs_exact"] <= 1
    assert set(p["ablations"]) == {"zero", "mean", "path"} and p["ablation"] == p["ablations"]["zero"]
    for a in p["ablations"].values():
        assert {"none", "key", "random_mean", "random_std", "kind"} <= set(a)
        assert all(0 <= a[k] <= 1 for k in ("none", "key", "random_mean"))
    assert {"ltv", "zero_shot", "variant_a", "variant_b"} <= set(p["ov_reconstruction"])
    assert sum(p["key_layer_histogram"]) == 3 and p["key_layer_histogram"][:2] == [0, 0]
    assert p["html"] == str(page)
    text = page.read_text()
    assert "plotly_click" in text and not re.search(r"<script[^>]*\bsrc=", text)


def test_text_and_training_a_vector(capsys):
    code, out, _ = _run(capsys, "analyze", "heads", "--task", TASK, "--n", "8", "--ablation", "path", "--n-random", "2")
    assert code == 0, out
    assert "Spearman(saliency, exact ablation effect)" in out and "ablation (path)" in out and "ablation (zero)" not in out
    assert "vector at L2@-1" in out  # trained at the middle layer of the 5


@pytest.mark.parametrize("argv, kind", [
    (["--ablation", "gaussian"], "UsageError"),
    (["--vector", "/nonexistent/v.safetensors"], "CheckpointError"),
    (["--fraction", "0"], "ConfigError"),
])
def test_failures_are_typed(capsys, vector_file, argv, kind):
    args = ["analyze", "heads", "--task", TASK, "--json", *argv]
    if "--vector" not in argv:
        args += ["--vector", str(vector_file)]
    code, out, _ = _run(capsys, *args)
    assert code == 2
    assert json.loads(out)["error"]["type"] == kind
