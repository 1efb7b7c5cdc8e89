"""`tvlens demo`: the per-task table, the best-layer choice, and the real-model defaults."""

from __future__ import annotations

import json

import pytest

from tvlens.cli import main


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_demo_keeps_the_layer_of_best_validation_accuracy(capsys):
    out = run_json(capsys, "demo", "--tasks", "toy/antonym", "toy/parity", "--shots", "1", "--layer", "0", "2")
    assert out["shots"] == [1] and out["ltv_site"].startswith("best of")
    for row in out["tasks"]:
        layers = row["ltv_layers"]
        assert [r["layer"] for r in layers] == [0, 2]
        best = max(layers, key=lambda r: r["val"])
        assert (row["ltv_layer"], row["ltv"], row["ltv_val"]) == (best["layer"], best["test"], best["val"])
    antonym = out["tasks"][0]
    assert antonym["ltv"] >= 0.9 and antonym["ltv"] > antonym["zero_shot"] + 0.5


def test_demo_text_has_a_layer_column_only_for_several_layers(capsys):
    assert main(["demo", "--tasks", "toy/antonym", "--shots", "1", "--layer", "0", "2"]) == 0
    assert "layer" in capsys.readouterr().out.splitlines()[1]
    assert main(["demo", "--tasks", "toy/antonym", "--shots", "1", "--no-ltv"]) == 0
    assert "layer" not in capsys.readouterr().out.splitlines()[1]


@pytest.mark.real_model
def test_demo_defaults_on_the_real_model(capsys, monkeypatch, smollm2):
    """Non-toy models default to the English word-pair tasks and 5 shots (LTV: docs/real-model.md)."""
    import tvlens

    real_load = tvlens.load_model
    monkeypatch.setattr(tvlens, "load_model", lambda spec, **kw: smollm2 if spec == "smollm2" else real_load(spec, **kw))
    out = run_json(capsys, "demo", "--model", "smollm2", "--no-ltv")
    assert out["shots"] == [5]
    assert [r["task"] for r in out["tasks"]] == ["capitalize", "antonym", "capital"]
    capitalize = out["tasks"][0]
    assert capitalize["icl"]["5"] >= 0.9 and capitalize["zero_shot"] < 0.2
