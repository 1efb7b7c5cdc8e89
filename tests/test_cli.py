"""The CLI's JSON: floats rounded to 4 decimals, intervals next to accuracies, the documented keys."""

import json
import re

import pytest

import tvlens as tv
from tvlens.cli._main import main, round_floats


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _floats(obj):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _floats(v)


def test_round_floats():
    assert round_floats({"a": 0.03999999910593033, "b": [1 / 3, {"c": float("nan")}], "d": 2}) == \
        {"a": 0.04, "b": [0.3333, {"c": None}], "d": 2}


def test_train_then_eval_json(capsys, tmp_path):
    out = tmp_path / "v.safetensors"
    code, text, err = _run(capsys, "train", "--task", "antonym", "--out", str(out), "--json", "--seed", "1")
    assert code == 0, err
    doc = json.loads(text)
    assert set(doc) >= {"task", "out", "sites", "shots", "val_accuracy", "val_ci95", "n_val", "test_accuracy",
                        "test_ci95", "n_test", "epochs", "steps", "seconds", "history"}
    assert set(doc["history"][0]) == {"epoch", "step", "train_loss", "val_accuracy", "val_loss", "lr", "seconds"}
    assert doc["test_ci95"][0] <= doc["test_accuracy"] <= doc["test_ci95"][1]
    assert all(len(repr(x).split(".")[-1]) <= 4 for x in _floats(doc))
    assert not re.search(r"\d\.\d{5,}", text)
    v = tv.TaskVector.load(out)
    assert v.meta["split_seed"] == 1 and v.meta["config"]["seed"] == 1

    code, text, err = _run(capsys, "eval", "--task", "antonym", "--vector", str(out), "--icl-shots", "1", "--json")
    assert code == 0, err
    doc = json.loads(text)
    assert doc["split_seed"] == 1  # the vector's splits, whatever --seed says
    assert set(doc) >= {"task", "model", "split_seed", "n_test", "zero_shot", "zero_shot_ci95", "icl", "icl_ci95", "vector"}
    assert set(doc["vector"]) == {"path", "task", "sites", "shots", "accuracy", "ci95", "label_accuracy"}
    assert "warnings" not in doc

    code, text, err = _run(capsys, "train", "--task", "antonym", "--out", str(out), "--overwrite", "--seed", "2")
    assert code == 0 and "95% CI" not in text and re.search(r"test \d\.\d{3} \[\d\.\d\d-\d\.\d\d\]", text)
    assert tv.TaskVector.load(out).meta["split_seed"] == 2


def test_toy_train_refuses_an_existing_out_unless_overwrite(capsys, tmp_path):
    import os

    from tvlens import _backend

    out = tmp_path / "ckpt"
    argv = ["toy-train", "--steps", "1", "--no-eval", "--threads", "1", "--out", str(out), "--json"]
    if not _backend.HAS_HOOKED:  # TransformerLens 4.x: a typed error naming the fix, nothing written
        code, text, err = _run(capsys, *argv)
        error = json.loads(text)["error"]
        assert code == 2 and error["type"] == "ConfigError" and "transformer_lens<4" in error["message"]
        assert not out.exists()
        pytest.skip("toy-train trains a HookedTransformer (TransformerLens 3.x); the typed refusal is checked above")
    code, text, err = _run(capsys, *argv)
    assert code == 0, err
    before = (out / "model.safetensors").read_bytes()
    code, text, err = _run(capsys, *argv)
    assert code == 2 and json.loads(text)["error"]["type"] == "OutputExistsError"
    assert (out / "model.safetensors").read_bytes() == before
    code, text, err = _run(capsys, *argv, "--overwrite", "--seed", "1")
    assert code == 0 and (out / "model.safetensors").read_bytes() != before
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not safetensors' 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or backup left
    assert "DeprecationWarning" not in err
