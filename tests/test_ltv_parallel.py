"""tv.train_ltv_layers: worker processes give the sequential loop's vectors; failures are typed and clean."""

import json
import logging
import multiprocessing
import tempfile

import pytest
import torch

import tvlens as tv
from tvlens.cli._main import main
from tvlens.errors import WorkerError

LAYERS = [0, 1, 2, 3]


def test_workers_equal_sequential(toy_model, one_thread):
    seq, _ = tv.train_ltv_layers(toy_model, "toy/antonym", LAYERS, seed=3, workers=1, progress=False)
    par, secs = tv.train_ltv_layers(toy_model, "toy/antonym", LAYERS, seed=3, workers=2, spec="toy", progress=False)
    assert list(par) == LAYERS and set(secs) == set(LAYERS)
    for layer in LAYERS:
        assert par[layer].sites == seq[layer].sites
        assert torch.equal(par[layer].values, seq[layer].values), layer
    # a different seed gives different vectors: the comparison above can fail
    other, _ = tv.train_ltv_layers(toy_model, "toy/antonym", [0], seed=4, workers=1, progress=False)
    assert not torch.equal(other[0].values, seq[0].values)


def test_failing_layer_raises_typed_error_and_cleans_up(toy_model, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(WorkerError, match="layer 99"):
        tv.train_ltv_layers(toy_model, "toy/antonym", [0, 99], seed=0, workers=2, spec="toy", progress=False)
    assert multiprocessing.active_children() == []
    assert list(tmp_path.iterdir()) == []  # the temp dir of the vectors is gone


def test_worker_that_cannot_load_the_model_raises(toy_model):
    with pytest.raises(WorkerError, match="layer") as info:
        tv.train_ltv_layers(toy_model, "toy/antonym", [0, 1], workers=2, spec="no-such-model-spec", progress=False)
    assert "no-such-model-spec" in str(info.value)
    assert multiprocessing.active_children() == []


def test_unshippable_task_falls_back_to_sequential(toy_model, monkeypatch, caplog):
    import tvlens.ltv._parallel as par

    monkeypatch.setattr(par, "_task_for_workers", lambda task: None)
    with caplog.at_level(logging.WARNING, logger="tvlens.ltv._parallel"):
        out, _ = tv.train_ltv_layers(toy_model, "toy/antonym", [0, 1], workers=2, spec="toy", progress=False)
    assert "sequentially" in caplog.text and sorted(out) == [0, 1]


def test_bad_workers_is_a_config_error(toy_model):
    with pytest.raises(tv.errors.ConfigError, match="workers"):
        tv.train_ltv_layers(toy_model, "toy/antonym", [0], workers=0)


def test_cli_linear_with_workers(capsys, tmp_path):
    threads = torch.get_num_threads()
    code = main(["analyze", "linear", "--model", "toy", "--task", "antonym", "--layers", "0", "2", "--workers", "2",
                 "--n-test", "40", "--no-lens", "--json", "--save-vectors", str(tmp_path)])
    out, _ = capsys.readouterr()
    assert code == 0
    payload = json.loads(out)
    assert [r["layer"] for r in payload["layers"]] == [0, 2]
    assert set(payload["train_seconds"]) == {"0", "2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ltv_L0.safetensors", "ltv_L2.safetensors"]
    assert torch.get_num_threads() == threads
