"""load_model / fingerprint / model_summary on tiny models, offline."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from tvlens import _backend

if not _backend.HAS_HOOKED:
    pytest.skip("TransformerLens 4.x: these loading tests build HookedTransformers as their oracle "
                "(tests/test_bridge_only.py covers load_model on the bridge)", allow_module_level=True)

from transformer_lens import HookedTransformer, HookedTransformerConfig

import tvlens._models as models
from tvlens._fingerprint import fingerprint, model_summary
from tvlens._models import load_model, toy_checkpoint_dir
from tvlens.errors import ModelLoadError, TvlensError

WORDS = ["<bos>", "<pad>", "<unk>"] + [f"w{i}" for i in range(47)]  # d_vocab 50
SEQS = torch.tensor([[0, 5, 9, 13, 4, 7, 30, 2], [0, 49, 48, 3, 3, 3, 11, 20], [1, 2, 3, 4, 5, 6, 7, 8]])


@pytest.fixture
def hf_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_cfg(**overrides) -> HookedTransformerConfig:
    kw = dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16, d_vocab=20, act_fn="gelu", seed=0)
    kw.update(overrides)
    return HookedTransformerConfig(**kw)


def save_word_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<bos>", pad_token="<pad>", unk_token="<unk>")
    tok.save_pretrained(str(directory))


def save_tiny_hf(directory: Path, arch: str, tokenizer: bool = True):
    import transformers

    torch.manual_seed(0)
    if arch == "gpt2":
        hf_cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(WORDS), n_positions=64, bos_token_id=0, eos_token_id=0)
        hf = transformers.GPT2LMHeadModel(hf_cfg)
    else:
        hf_cfg = transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=len(WORDS), max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
        )
        hf = transformers.LlamaForCausalLM(hf_cfg)
    with torch.no_grad():  # non-trivial norm weights, so fold_ln is really exercised
        for name, p in hf.named_parameters():
            if "ln" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.eval()
    hf.save_pretrained(str(directory))
    if tokenizer:
        save_word_tokenizer(directory)
    return hf


# --- config spec ---------------------------------------------------------------------------


def test_config_spec_gives_model_of_that_shape():
    cfg = tiny_cfg()
    model = load_model(cfg)
    assert isinstance(model, HookedTransformer)
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads, model.cfg.d_vocab) == (2, 16, 2, 20)
    assert model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 20)  # [batch, pos, d_vocab]
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.tokenizer is None


def test_config_spec_dtype_and_callers_cfg_untouched():
    cfg = tiny_cfg()
    before = cfg.to_dict()
    model = load_model(cfg, dtype="float64")
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert cfg.to_dict() == before


# --- local HF directories ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_local_hf_dir_matches_hf_logits(tmp_path, arch, no_network, hf_offline):
    directory = tmp_path / f"tiny-{arch}"  # "llama" in the name must not confuse TransformerLens
    hf = save_tiny_hf(directory, arch)
    model = load_model(str(directory))
    assert model.cfg.n_layers == 2 and model.cfg.d_vocab == len(WORDS)
    assert model.cfg.model_name == directory.name
    with torch.no_grad():
        ref = hf(SEQS).logits.log_softmax(-1)  # [batch, pos, d_vocab]
        got = model(SEQS).log_softmax(-1)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert model.tokenizer is not None
    assert model.to_tokens("w1 w2").tolist() == [[0, 4, 5]]


def test_local_hf_dir_without_processing_gives_identical_logits(tmp_path, no_network):
    hf = save_tiny_hf(tmp_path, "gpt2")
    model = load_model(tmp_path, fold_ln=False, center_writing_weights=False, center_unembed=False)
    with torch.no_grad():
        torch.testing.assert_close(model(SEQS), hf(SEQS).logits, atol=1e-4, rtol=0)


def test_local_hf_dir_without_tokenizer(tmp_path, no_network):
    save_tiny_hf(tmp_path, "gpt2", tokenizer=False)
    model = load_model(str(tmp_path))
    assert model.tokenizer is None
    assert model_summary(model)["has_tokenizer"] is False
    assert model(SEQS).shape == (3, 8, len(WORDS))


def test_official_name_from_local_hf_cache(tmp_path, no_network, hf_offline):
    """Offline with the model in the HF cache: the official-name path works without network."""
    save_tiny_hf(tmp_path / "src", "gpt2")
    repo = tmp_path / "cache" / "models--gpt2"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tmp_path / "src", snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    config = json.loads((snapshot / "config.json").read_text())
    config["n_ctx"] = config["n_positions"]  # the real gpt2 config.json has it
    (snapshot / "config.json").write_text(json.dumps(config))
    model = load_model("gpt2", cache_dir=str(tmp_path / "cache"))
    assert model.cfg.d_model == 32 and model.tokenizer is not None


# --- failures ------------------------------------------------------------------------------


def test_official_name_fails_fast_when_offline(tmp_path, no_network, hf_offline):
    with pytest.raises(ModelLoadError, match="could not download 'gpt2'") as info:
        load_model("gpt2", cache_dir=str(tmp_path))  # an empty cache, even where gpt2 is cached
    assert "local directory" in str(info.value)
    assert isinstance(info.value, TvlensError) and isinstance(info.value, RuntimeError)


def test_official_name_fails_fast_when_hub_unreachable(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(ModelLoadError, match="no network"):
        load_model("gpt2", cache_dir=str(tmp_path))


@pytest.mark.slow
def test_official_name_without_offline_env_still_finishes(monkeypatch):
    """The real thing: no HF_HUB_OFFLINE, real sockets; with no network it must not hang."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    try:
        model = load_model("gpt2")
    except ModelLoadError as exc:
        assert "gpt2" in str(exc)
    else:  # a machine with network (or a warm cache)
        assert model.cfg.n_layers == 12


def test_unknown_name_suggests_close_matches(no_network):
    with pytest.raises(ModelLoadError, match="unknown model 'gtp2'") as info:
        load_model("gtp2")
    assert "Did you mean" in str(info.value) and "gpt2" in str(info.value)


@pytest.mark.parametrize("spec", ["./no/such/model", "missing-org/missing-model", "~/tvlens-missing-dir"])
def test_missing_directory(spec, no_network):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(spec)


def test_directory_without_config_and_file(tmp_path, no_network):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(str(tmp_path / "weights.bin"))


def test_unsupported_architecture(tmp_path, no_network):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MadeUpForCausalLM"], "model_type": "madeup"}))
    with pytest.raises(ModelLoadError, match="MadeUpForCausalLM"):
        load_model(str(tmp_path))


def test_extra_kwargs_rejected_for_config():
    with pytest.raises(TypeError, match="fold_ln"):
        load_model(tiny_cfg(), fold_ln=False)


# --- toy -----------------------------------------------------------------------------------


def test_toy_checkpoint_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TVLENS_TOY_CHECKPOINT", str(tmp_path / "nothing"))
    assert toy_checkpoint_dir() == tmp_path / "nothing"
    with pytest.raises(ModelLoadError, match="tvlens toy-train"):
        load_model("toy")


def test_toy_default_dir_is_package_data(monkeypatch):
    monkeypatch.delenv("TVLENS_TOY_CHECKPOINT", raising=False)
    assert toy_checkpoint_dir() == Path(models.__file__).resolve().parent / "toy" / "checkpoint"


def test_toy_loads_fast_and_offline(tmp_path, monkeypatch, no_network):
    from tvlens.toy._train import ToyTrainConfig, ToyTrainResult, save_toy_checkpoint

    tc = ToyTrainConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=64, n_ctx=32, steps=1)
    torch.manual_seed(0)
    source = HookedTransformer(tc.model_config())
    save_toy_checkpoint(ToyTrainResult(model=source, config=tc, losses=(1.0,), seconds=0.0), tmp_path / "ckpt")
    monkeypatch.setenv("TVLENS_TOY_CHECKPOINT", str(tmp_path / "ckpt"))
    model = load_model("toy")
    assert fingerprint(model) == fingerprint(source)
    assert fingerprint(model).startswith("gpt2-like:L1-d32-h2-v")
    assert model.tokenizer is not None
    assert fingerprint(load_model(str(tmp_path / "ckpt"))) == fingerprint(source)  # the dir as a spec


# --- fingerprint ---------------------------------------------------------------------------


def test_fingerprint_stable_and_copy_invariant():
    model = load_model(tiny_cfg())
    fp = fingerprint(model)
    assert fp == fingerprint(model)
    assert fingerprint(copy.deepcopy(model)) == fp
    assert fp.startswith("gpt2-like:L2-d16-h2-v20:sha256:") and len(fp.split(":")[-1]) == 16


def test_fingerprint_sees_any_weight_change():
    model = load_model(tiny_cfg())
    fp = fingerprint(model)
    with torch.no_grad():
        model.blocks[1].mlp.b_out[3] += 1e-6
    assert fingerprint(model) != fp
    other = load_model(tiny_cfg(seed=1))
    assert fingerprint(other) != fp
    assert fingerprint(load_model(tiny_cfg(), dtype=torch.float64)) != fp


def test_fingerprint_is_kept_until_a_weight_or_config_field_changes(monkeypatch):
    # hashing a real model's weights takes ~0.5 s, and every evaluation checks a vector's fingerprint: the name is kept
    # per model and recomputed when a weight (its version counter), a parameter tensor or a hashed config field changes
    import sys

    fmod = sys.modules["tvlens._fingerprint"]
    model = load_model(tiny_cfg())
    calls = []
    real = fmod._hash
    monkeypatch.setattr(fmod, "_hash", lambda *a: calls.append(1) or real(*a))
    fp = fingerprint(model)
    assert [fingerprint(model) for _ in range(3)] == [fp] * 3 and len(calls) == 1
    with torch.no_grad():
        model.blocks[0].attn.W_Q[0, 0, 0] += 1.0
    changed = fingerprint(model)
    assert changed != fp and len(calls) == 2
    assert changed == real(copy.deepcopy(model), *_fields_and_arch(fmod, model), False)  # what hashing afresh gives
    model.cfg.eps = model.cfg.eps * 2
    assert fingerprint(model) not in (fp, changed)
    model.blocks[0].mlp.b_in = torch.nn.Parameter(model.blocks[0].mlp.b_in.detach().clone() + 1)  # a new tensor
    assert len({fingerprint(model), fp, changed}) == 3 and len(calls) == 4


def _fields_and_arch(fmod, model):
    import json

    cfg = model.cfg
    fields = json.dumps({name: getattr(cfg, name, None) for name in fmod._HASHED_CFG_FIELDS}, sort_keys=True, default=str)
    return fields, f"{fmod._family(cfg)}:L{cfg.n_layers}-d{cfg.d_model}-h{cfg.n_heads}-v{cfg.d_vocab}"


def test_fingerprint_architecture_part_follows_shape():
    arch = lambda m: fingerprint(m).split(":sha256:")[0]  # noqa: E731
    base = arch(load_model(tiny_cfg()))
    assert arch(load_model(tiny_cfg(n_layers=3))) != base
    assert arch(load_model(tiny_cfg(d_vocab=21))) != base
    assert arch(load_model(tiny_cfg(d_model=32, d_head=16))) != base
    # same shapes, different function: the hash part changes
    assert fingerprint(load_model(tiny_cfg(act_fn="relu"))) != fingerprint(load_model(tiny_cfg()))


def test_fingerprint_golden_value():
    """Frozen: a change of format or hashing (or of cross-process determinism) fails here."""
    model = load_model(tiny_cfg())
    with torch.no_grad():
        for i, (_, p) in enumerate(sorted(model.named_parameters())):
            values = (torch.arange(p.numel()) % 7 - 3).float() * 0.25 * (i + 1)  # exact in float32
            p.copy_(values.reshape(p.shape))
    assert fingerprint(model) == GOLDEN_FINGERPRINT


GOLDEN_FINGERPRINT = "gpt2-like:L2-d16-h2-v20:sha256:40f5f8c28a09d734"


def test_fingerprint_large_tensors_are_sampled():
    model = load_model(tiny_cfg(n_layers=1, d_vocab=70_000))  # W_E, W_U: 1.12M elements each: exact
    big = load_model(tiny_cfg(n_layers=1, d_model=64, d_head=32, d_vocab=70_000))  # 4.48M: sampled
    assert fingerprint(big) != fingerprint(big, exact=True)
    fp = fingerprint(big)
    with torch.no_grad():
        big.embed.W_E.view(-1)[0] += 1.0  # element 0 is always read
    assert fingerprint(big) != fp
    assert fingerprint(model) == fingerprint(model, exact=True)



def test_model_summary():
    model = load_model(tiny_cfg())
    summary = model_summary(model)
    for key in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx", "act_fn", "normalization_type", "model_name", "fingerprint"):
        assert key in summary
    assert summary["fingerprint"] == fingerprint(model)
    assert (summary["n_layers"], summary["d_vocab"], summary["n_ctx"]) == (2, 20, 16)
    json.dumps(summary)  # JSON-ready


def test_hookedtransformer_passthrough():
    model = load_model(tiny_cfg())
    assert load_model(model) is model
