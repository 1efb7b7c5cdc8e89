import json

import pytest
import torch

import tvlens as tv
from tvlens.errors import CheckpointError, IncompatibleModelError


def make_vector(model, sites=((1, -1),), seed=0):
    g = torch.Generator().manual_seed(seed)
    sites = tuple(tv.Site(*s) for s in sites)
    return tv.TaskVector(
        torch.randn(len(sites), model.cfg.d_model, generator=g), sites, task="toy/antonym",
        model_fingerprint=tv.fingerprint(model), d_model=model.cfg.d_model, n_layers=model.cfg.n_layers,
        meta={"note": "test"},
    )


def test_save_load_roundtrip_gives_identical_logits(tiny_model, tmp_path):
    v = make_vector(tiny_model, sites=((0, -1), (1, -2)))
    path = v.save(tmp_path / "v.safetensors")
    w = tv.TaskVector.load(path)
    assert torch.equal(v.values, w.values) and w.sites == v.sites and w.meta == {"note": "test"}
    assert (w.task, w.operation, w.model_fingerprint) == (v.task, v.operation, v.model_fingerprint)
    toks = tiny_model.to_tokens("kevi -> vitilu , keso ->")
    with torch.no_grad(), tv.steer(tiny_model, v):
        a = tiny_model(toks)
    with torch.no_grad(), tv.steer(tiny_model, w):
        b = tiny_model(toks)
    assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_file_is_safetensors_with_json_header(tiny_model, tmp_path):
    from safetensors import safe_open

    path = make_vector(tiny_model).save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["tvlens"])
    assert header["hook_names"] == ["blocks.1.hook_resid_pre"] and header["operation"] == "add"


def test_other_shape_is_refused(tiny_model, toy_tokenizer, tmp_path):
    from tests.conftest import make_tiny_model

    other = make_tiny_model(toy_tokenizer, d_model=48, n_heads=2)
    v = tv.TaskVector.load(make_vector(other).save(tmp_path / "v.safetensors"))
    with pytest.raises(IncompatibleModelError, match="d_model=48"):
        with tv.steer(tiny_model, v):
            pass
    deeper = make_tiny_model(toy_tokenizer, n_layers=3)
    with pytest.raises(IncompatibleModelError, match="n_layers"):
        v3 = make_vector(deeper, sites=((2, -1),))
        with tv.steer(tiny_model, v3):
            pass


def test_other_fingerprint_needs_explicit_override(tiny_model, toy_tokenizer):
    from tests.conftest import make_tiny_model

    twin = make_tiny_model(toy_tokenizer, seed=1)  # same shape, other weights
    v = make_vector(twin)
    with pytest.raises(IncompatibleModelError, match="allow_other_fingerprint"):
        with tv.steer(tiny_model, v):
            pass
    with tv.steer(tiny_model, v, allow_other_fingerprint=True):
        tiny_model(tiny_model.to_tokens("kevi ->"))


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no task-vector file"):
        tv.TaskVector.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        tv.TaskVector.load(junk)
    from safetensors.torch import save_file

    save_file({"values": torch.zeros(1, 4)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="no tvlens task-vector metadata"):
        tv.TaskVector.load(tmp_path / "plain.safetensors")


def test_shape_validation():
    with pytest.raises(CheckpointError, match="one row per site"):
        tv.TaskVector(torch.zeros(2, 8), (tv.Site(0, -1),))


def test_equality_compares_values_not_identity():
    import torch

    import tvlens as tv

    sites = (tv.Site(1, -1), tv.Site(2, -1))
    a = tv.TaskVector(torch.ones(2, 4), sites, task="t")
    assert a == tv.TaskVector(torch.ones(2, 4), sites, task="t")  # multi-row: a generated == would raise
    assert a != tv.TaskVector(torch.ones(2, 4) * 2, sites, task="t")
    assert a != tv.TaskVector(torch.ones(2, 4), sites, task="other")
    assert a != tv.TaskVector(torch.ones(2, 4, dtype=torch.float64), sites, task="t")
    assert a != tv.TaskVector(torch.ones(1, 4), sites[:1], task="t") and a != "not a vector"
