"""load_model(..., backend="bridge"): the TransformerBridge against the HookedTransformer oracle.

Each model is loaded on both backends from the same weights (a tiny random GPT-2 and a tiny GQA
Llama saved with save_pretrained, a tiny Llama GGUF file, the toy checkpoint, SmolLM2 when its
package is installed); the hooked one is the reference for logits, ``tv.evaluate`` (plain and
steered) and ``train_ltv``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tvlens as tv
from tvlens import _backend, _engine
from tvlens.errors import ModelLoadError

pytestmark = pytest.mark.skipif(
    not (_backend.HAS_BRIDGE and _backend.HAS_HOOKED),
    reason="needs TransformerLens with both TransformerBridge and HookedTransformer (3.9.x): the hooked model is the oracle",
)

LOGIT_ATOL = 1e-5  # tiny models and the toy: measured <= 4e-6
SMOLLM2_LOGIT_ATOL = 1e-3  # 30 layers of fp32 in another operation order: measured 2.7e-4 on logits of size ~20
QUICK = tv.LTVConfig(batch_size=8, epoch_size=16, max_epochs=3, patience=3, n_train=16, n_val=8, lr=0.5)


def _save_tiny(directory, arch: str, tokenizer) -> None:
    import transformers

    torch.manual_seed(0)
    n_vocab = len(tokenizer.get_vocab())
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=n_vocab,
                                                                  n_positions=128, **ids))
    else:  # GQA: 4 query heads share 2 key/value heads; no biases anywhere
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=n_vocab, max_position_embeddings=128, **ids))
    with torch.no_grad():  # non-trivial norm weights, so that folding them is exercised
        for name, p in hf.named_parameters():
            if "ln" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.eval().save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, toy_tokenizer):
    out = {}
    for arch in ("gpt2", "llama"):
        out[arch] = tmp_path_factory.mktemp(f"tiny-{arch}")
        _save_tiny(out[arch], arch, toy_tokenizer)
    return out


@pytest.fixture(scope="module", params=["gpt2", "llama", "toy"])
def pair(request, tiny_dirs):
    """(hooked, bridge) of one model."""
    spec = "toy" if request.param == "toy" else str(tiny_dirs[request.param])
    hooked, bridge = tv.load_model(spec), tv.load_model(spec, backend="bridge")
    assert _backend.is_hooked(hooked) and _backend.is_bridge(bridge)
    return hooked, bridge


def _prompts(task: str = "toy/antonym", k: int = 2):
    return tv.make_prompts(tv.make_splits(tv.tasks.get(task)), "test", k=k, seed=0)


def _padded(model, texts):
    batch = model.to_tokens(texts, padding_side="left")
    pad = model.tokenizer.pad_token_id
    mask = torch.ones_like(batch)
    for i, text in enumerate(texts):  # left padding: the first (width - length) columns
        n = model.to_tokens(text).shape[1]
        mask[i, : batch.shape[1] - n] = 0
    assert pad is not None
    return batch, mask


def _hook_state(model):
    """Every hook a model carries: TransformerLens hook points' functions and torch's module hooks."""
    points = {name: (len(hp.fwd_hooks), len(hp.bwd_hooks)) for name, hp in model.hook_dict.items()}
    torch_hooks = {(name, kind): len(getattr(m, kind)) for name, m in model.named_modules()
                   for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")}
    return points, torch_hooks, "forward" in model.__dict__


def test_auto_means_hooked_here():
    assert _backend.default_backend() == "hooked"
    assert _backend.is_hooked(tv.load_model("toy", backend="auto"))


def test_final_logits_match_hooked(pair):
    hooked, bridge = pair
    texts = _prompts().texts[:6]
    tokens, mask = _padded(hooked, texts)
    assert torch.equal(tokens, bridge.to_tokens(texts, padding_side="left"))
    with torch.no_grad():
        ref, got = hooked(tokens, attention_mask=mask), bridge(tokens, attention_mask=mask)
        assert (got - ref).abs().max() <= LOGIT_ATOL
        resid_ref, resid = (_engine.final_residual(m, tokens, mask) for m in (hooked, bridge))
    assert resid.shape == (len(texts), tokens.shape[1], hooked.cfg.d_model)  # a residual, not logits
    assert (resid - resid_ref).abs().max() <= LOGIT_ATOL
    assert ref.abs().max() > 10 * LOGIT_ATOL  # the comparison is not between two near-zero tensors


def test_evaluate_plain_and_steered_identical(pair):
    hooked, bridge = pair
    vector = tv.train_ltv(hooked, "toy/antonym", layers=1, config=QUICK, progress=False, cache=False).vector
    prompts = _prompts(k=2)
    for steer in (False, True):
        results = []
        for model in (hooked, bridge):
            iv = tv.steering(model, vector, scale=4.0, allow_other_fingerprint=True) if steer else None
            results.append(tv.evaluate(model, prompts, intervention=iv, batch_size=16))
        ref, got = results
        assert got.correct == ref.correct and got.accuracy == ref.accuracy
        torch.testing.assert_close(got.gold_logprob, ref.gold_logprob, atol=LOGIT_ATOL, rtol=0)
    plain = tv.evaluate(bridge, prompts).gold_logprob
    assert (plain - got.gold_logprob).abs().max() > 1e-3  # the steering really changed the bridge's outputs


def test_steering_left_padded_rows_of_several_lengths(pair):
    """The vector's site (the token after BOS) sits in another column on each row: the bridge must find
    it from the forward call's attention mask, as the hooked model does from its blocks' mask."""
    hooked, bridge = pair
    vector = tv.train_ltv(hooked, "toy/antonym", layers=1, positions=1, config=QUICK, progress=False, cache=False).vector
    texts = [t for k in (0, 1, 2) for t in _prompts(k=k).texts[:3]]
    tokens, mask = _padded(hooked, texts)
    assert len(set(mask.sum(1).tolist())) == 3
    out = []
    for model in (hooked, bridge):
        with torch.no_grad(), tv.steer(model, vector, scale=4.0, allow_other_fingerprint=True):
            out.append(model(tokens, attention_mask=mask)[:, -1])
    with torch.no_grad():
        plain = bridge(tokens, attention_mask=mask)[:, -1]
    assert (out[1] - out[0]).abs().max() <= LOGIT_ATOL
    assert ((out[1] - plain).abs().amax(-1) > 1e-3).all()  # every row was steered


def test_classification_label_accuracy_identical(pair):
    hooked, bridge = pair
    prompts = _prompts("toy/sentiment", k=2)
    ref, got = tv.evaluate(hooked, prompts), tv.evaluate(bridge, prompts)
    assert got.label_accuracy == ref.label_accuracy and got.accuracy == ref.accuracy
    torch.testing.assert_close(got.gold_logprob, ref.gold_logprob, atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("fast", [True, False])
def test_train_ltv_same_seed_same_vector(pair, one_thread, fast):
    hooked, bridge = pair
    cfg = dataclasses.replace(QUICK, fast=fast)
    ref = tv.train_ltv(hooked, "toy/antonym", layers=1, config=cfg, progress=False, cache=False)
    got = tv.train_ltv(bridge, "toy/antonym", layers=1, config=cfg, progress=False, cache=False)
    other = tv.train_ltv(hooked, "toy/antonym", layers=1, config=dataclasses.replace(cfg, seed=1), progress=False, cache=False)
    assert got.steps == ref.steps
    assert (got.vector.values - ref.vector.values).abs().max() <= 1e-5
    assert (other.vector.values - ref.vector.values).abs().max() > 1e-3  # training moved the vectors: the check can fail
    assert got.val_accuracy == ref.val_accuracy


def test_hooks_gone_after_success_and_exception(pair):
    hooked, bridge = pair
    before = _hook_state(bridge)  # the bridge keeps hooks of its own; ours must come and go
    vector = tv.train_ltv(bridge, "toy/antonym", layers=1, config=QUICK, progress=False, cache=False).vector
    prompts = _prompts(k=0)
    tv.evaluate(bridge, prompts, intervention=tv.steering(bridge, vector))
    assert _hook_state(bridge) == before
    with pytest.raises(RuntimeError, match="inside the steering block"):
        with tv.steer(bridge, vector):
            bridge(bridge.to_tokens(prompts.texts[0]))
            raise RuntimeError("inside the steering block")
    assert _hook_state(bridge) == before
    too_long = torch.zeros(1, bridge.cfg.n_ctx + 50, dtype=torch.long)  # fails inside the forward, hooks installed
    with pytest.raises(Exception):
        with tv.steer(bridge, vector):
            _engine.final_residual(bridge, too_long)
    assert _hook_state(bridge) == before
    for hp in bridge.hook_dict.values():
        assert not hp.fwd_hooks and not hp.bwd_hooks


def test_gguf_file_on_bridge(tiny_llama_gguf):
    path, hf = tiny_llama_gguf
    hooked, bridge = tv.load_model(path), tv.load_model(path, backend="bridge")
    assert _backend.is_bridge(bridge)
    tokens = torch.tensor([[0, 5, 9, 13, 4, 7], [0, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        ref, got = hooked(tokens), bridge(tokens)
    assert (got - ref).abs().max() <= LOGIT_ATOL
    assert bridge.W_K.shape[1] == 2 and hooked.W_K.shape[1] == 4  # the bridge keeps GQA's key/value heads grouped


def test_smollm2_on_bridge(smollm2):
    bridge = tv.load_model("smollm2", backend="bridge")
    prompts = tv.make_prompts(tv.make_splits(tv.tasks.get("capitalize"), seed=0), "test", k=3, seed=0).subset(range(24))
    texts = ["The capital of France is", "hot -> cold, big ->", "one two three four"]
    tokens, mask = _padded(smollm2, texts)
    with torch.no_grad():
        ref, got = smollm2(tokens, attention_mask=mask), bridge(tokens, attention_mask=mask)
    assert (got - ref).abs().max() <= SMOLLM2_LOGIT_ATOL
    assert torch.equal(got[:, -1].argmax(-1), ref[:, -1].argmax(-1))
    ref, got = tv.evaluate(smollm2, prompts), tv.evaluate(bridge, prompts)
    assert got.correct == ref.correct and ref.correct > 0
    torch.testing.assert_close(got.gold_logprob, ref.gold_logprob, atol=SMOLLM2_LOGIT_ATOL, rtol=0)


# --- what the bridge does not load: typed errors that name the fix ---------------------------------


def test_bridge_errors_name_the_fix(tmp_path, tiny_dirs, no_network):
    from transformer_lens import HookedTransformerConfig

    with pytest.raises(ModelLoadError, match="backend='hooked'"):
        tv.load_model(HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, d_vocab=10, act_fn="relu"),
                      backend="bridge")
    with pytest.raises(ModelLoadError, match="save_pretrained"):
        tv.load_model("gpt2", backend="bridge")  # a hub name: local folders only
    with pytest.raises(ModelLoadError, match="does not convert"):
        tv.load_model(tv.load_model("toy"), backend="bridge")
    bridge = tv.load_model(str(tiny_dirs["gpt2"]), backend="bridge")
    assert tv.load_model(bridge, backend="bridge") is bridge and tv.load_model(bridge) is bridge
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((tiny_dirs["gpt2"] / name).read_bytes())
    with pytest.raises(ModelLoadError, match="needs one"):
        tv.load_model(str(no_tok), backend="bridge")
    with pytest.raises(TypeError, match="n_ctx"):
        tv.load_model(str(tiny_dirs["gpt2"]), backend="bridge", n_ctx=32)


# --- the adapters in tvlens._backend ------------------------------------------------------------


def test_gqa_weights_per_query_head_and_missing_biases(pair):
    hooked, bridge = pair
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        torch.testing.assert_close(_backend.per_query_head(bridge, name), hooked.__getattribute__(name), atol=1e-6, rtol=0)
        assert torch.equal(_backend.per_query_head(hooked, name), getattr(hooked, name))
    for name in ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out"):
        got, ref = _backend.stacked_bias(bridge, name), _backend.stacked_bias(hooked, name)
        assert got.shape == ref.shape, name
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0, msg=name)
    if bridge.cfg.n_key_value_heads:  # the GQA model: the bridge keeps K/V grouped, the adapter expands them
        assert bridge.W_V.shape[1] == bridge.cfg.n_key_value_heads < bridge.cfg.n_heads


def test_ov_products_identical_on_the_bridge(pair):
    from tvlens.analysis.ov import unscaled_products

    hooked, bridge = pair
    theta = torch.randn(hooked.cfg.d_model, generator=torch.Generator().manual_seed(0))
    ref, got = unscaled_products(hooked, theta, [0, 1]), unscaled_products(bridge, theta, [0, 1])
    assert got.shape == (2, hooked.cfg.n_heads, hooked.cfg.d_model)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
