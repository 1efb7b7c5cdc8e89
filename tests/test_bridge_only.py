"""The TransformerBridge without a HookedTransformer oracle: what must hold on TransformerLens 4.x too.

tests/test_bridge.py holds the bridge against the hooked model (3.9 only); these run wherever the
bridge exists, against frozen numbers and against tvlens's own invariants.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tvlens as tv
from tests.conftest import assert_no_hooks_left, make_tiny_model
from tests.test_vector import make_vector
from tvlens import _backend, _memo
from tvlens.errors import ModelLoadError

pytestmark = pytest.mark.skipif(not _backend.HAS_BRIDGE, reason="no TransformerBridge in this TransformerLens (< 3.9)")

# the toy's last-position logits for "kevi -> " on TransformerLens 3.9's HookedTransformer (torch 2.13, one thread);
# the 4.3 bridge gave the same five values to every printed digit
TOY_TOP5 = ([22, 358, 214, 360, 202], [7.18125, 6.82586, 6.21586, 6.17983, 6.14916])
# the toy's fingerprint on TransformerLens 3.9's HookedTransformer (tests/test_toy_model.py holds it there too)
TOY_FINGERPRINT = "gpt2-like:L5-d128-h4-v374:sha256:2723a2eff2364e56"
# an LTV trained on that hooked model, with its steered logits and accuracy there (tests/fixtures/make_toy_vector_tl39.py)
TL39_VECTOR = Path(__file__).parent / "fixtures" / "toy_antonym_tl39.safetensors"


@pytest.fixture(scope="module")
def toy_bridge():
    return tv.load_model("toy", backend="bridge")


def test_auto_picks_what_the_installation_offers():
    model = tv.load_model("toy")
    assert _backend.is_bridge(model) == (not _backend.HAS_HOOKED)
    assert _backend.is_hooked(model) == _backend.HAS_HOOKED


def test_toy_bridge_logits_equal_the_hooked_reference(toy_bridge, one_thread):
    toks = toy_bridge.to_tokens("kevi -> ")
    with torch.no_grad():
        top = toy_bridge(toks)[0, -1].topk(5)
    assert top.indices.tolist() == TOY_TOP5[0]
    assert torch.allclose(top.values, torch.tensor(TOY_TOP5[1]), atol=1e-5)


def test_the_bridges_own_capture_hooks_are_not_user_hooks(toy_bridge):
    toy_bridge(toy_bridge.to_tokens("kevi -> "))  # the bridge wires its capture hooks on the first forward
    assert _memo.memo_key(toy_bridge) is not None  # so the memo stays usable on a bridge
    assert_no_hooks_left(toy_bridge)
    handle = toy_bridge.blocks[0].register_forward_hook(lambda *a: None)
    try:
        assert _memo.memo_key(toy_bridge) is None
        assert _backend.user_torch_hooks(toy_bridge) == [("blocks.0", "_forward_hooks")]
    finally:
        handle.remove()


def test_generate_prompt_policy_steers_only_the_prompt(toy_bridge):
    """On the bridge, model.generate's steps are ordinary forwards: 'prompt' must still steer the prompt's last
    token only. Oracle: the engine's greedy loop (full forwards) with the vector at the prompt's last column."""
    from tvlens._engine_generate import generate

    v = make_vector(toy_bridge, sites=((2, -1),))
    v = v.with_values(v.values * 8)
    batch = tv.tokenize_prompts(toy_bridge, ["kevi -> "], [" x"], padding_side="left")
    want = generate(toy_bridge, batch, [tv.steering(toy_bridge, v).edit], max_new_tokens=4, use_cache=False)
    with tv.steer(toy_bridge, v, generation="prompt"):
        got = toy_bridge.generate("kevi -> ", max_new_tokens=4, do_sample=False, verbose=False, return_type="tokens")
    assert got[0, -4:].tolist() == want[0].tolist()
    with tv.steer(toy_bridge, v, generation="every_token"):
        every = toy_bridge.generate("kevi -> ", max_new_tokens=4, do_sample=False, verbose=False, return_type="tokens")
    assert not torch.equal(every, got)
    assert_no_hooks_left(toy_bridge)


def test_engine_generate_never_trusts_an_ignored_cache(toy_bridge):
    """The bridge ignores past_kv_cache: the engine's cached loop must give what full forwards give."""
    from tvlens._engine_generate import generate

    batch = tv.tokenize_prompts(toy_bridge, ["kevi -> ", "mopa -> tuli"], [" x", " x"], padding_side="left")
    cached = generate(toy_bridge, batch, max_new_tokens=5, use_cache=True)
    full = generate(toy_bridge, batch, max_new_tokens=5, use_cache=False)
    assert torch.equal(cached, full)


@pytest.mark.skipif(_backend.HAS_HOOKED, reason="TransformerLens 3.x loads hub names on the hooked backend")
def test_hub_names_on_4x_name_the_local_folder_fix():
    with pytest.raises(ModelLoadError, match="local models only"):
        tv.load_model("gpt2")


def test_unknown_names_still_get_suggestions():
    with pytest.raises(ModelLoadError, match="Did you mean"):
        tv.load_model("gpt2-smal")


def test_tiny_model_fixture_is_on_the_auto_backend(toy_tokenizer):
    model = make_tiny_model(toy_tokenizer, n_layers=1)
    assert _backend.is_bridge(model) == (not _backend.HAS_HOOKED)
    assert model.cfg.n_layers == 1


def test_the_toys_bridge_has_the_hooked_models_fingerprint(toy_bridge):
    """The same checkpoint on either backend is the same function (logits within 2e-6): the same fingerprint."""
    assert tv.fingerprint(toy_bridge) == TOY_FINGERPRINT
    assert tv.fingerprint(toy_bridge, exact=True) == TOY_FINGERPRINT  # the toy is hashed in full either way


def test_the_bridges_fingerprint_still_tells_other_weights_apart(toy_bridge, toy_tokenizer):
    w = next(p for n, p in toy_bridge.named_parameters() if n.endswith("attn._original_component.v._original_component.weight"))
    kept = w[5, 7].item()
    try:
        with torch.no_grad():
            w[5, 7] += 1e-3
        assert tv.fingerprint(toy_bridge) != TOY_FINGERPRINT
    finally:
        with torch.no_grad():
            w[5, 7] = kept
    assert tv.fingerprint(toy_bridge) == TOY_FINGERPRINT
    tiny = [tv.fingerprint(make_tiny_model(toy_tokenizer, n_layers=1, seed=s)) for s in (0, 1)]
    assert tiny[0] != tiny[1]


def test_a_vector_trained_on_the_hooked_toy_steers_the_bridge(toy_bridge, one_thread):
    """Issue 19, item 3: a vector file made on TransformerLens 3.9's HookedTransformer loads on the bridge (3.9 or
    4.x), passes the fingerprint check without allow_other_fingerprint, and steers as it did there."""
    v = tv.TaskVector.load(TL39_VECTOR)
    assert v.model_fingerprint == TOY_FINGERPRINT
    v.check_compatible(toy_bridge)  # raises IncompatibleModelError on another fingerprint
    made = v.meta["steered_top5"]
    with torch.no_grad(), tv.steer(toy_bridge, v):
        top = toy_bridge(toy_bridge.to_tokens(made["prompt"]))[0, -1].topk(5)
    assert top.indices.tolist() == made["indices"]
    assert torch.allclose(top.values, torch.tensor(made["values"]), atol=1e-5)
    splits = tv.make_splits(tv.tasks.get("toy/antonym"), seed=0)
    test = tv.make_prompts(splits, "test", k=0)
    assert len(test) == v.meta["n_test"]
    assert tv.evaluate(toy_bridge, test, intervention=tv.steering(toy_bridge, v)).accuracy == v.meta["test_accuracy_k0"]
    assert_no_hooks_left(toy_bridge)


def test_the_same_ltv_trains_on_the_bridge_and_records_its_backend(toy_bridge, one_thread, tmp_path):
    """Issue 19: the LTV of the hooked fixture's recipe (same seed, config and data), trained again on the bridge
    (3.9 or 4.x), equals the hooked one within 1e-5; its file records the backend it was made on."""
    ref = tv.TaskVector.load(TL39_VECTOR)
    task = tv.tasks.get("toy/antonym")
    res = tv.train_ltv(toy_bridge, task, layers=[2], positions=[-1], splits=tv.make_splits(task, seed=0),
                       config=tv.LTVConfig(max_epochs=4), progress=False, cache=False)
    v = res.vector
    assert v.meta["best_epoch"] == ref.meta["best_epoch"] and v.meta["steps"] == ref.meta["steps"]
    assert (v.values - ref.values).abs().max() < 1e-5 * ref.values.abs().max()  # relative to the vector's size
    assert v.meta["backend"]["class"] == "TransformerBridge" and v.meta["backend"]["compatibility_mode"] is True
    again = tv.TaskVector.load(v.save(tmp_path / "v.safetensors"))
    assert again.meta["backend"] == v.meta["backend"] and again == v
    assert_no_hooks_left(toy_bridge)


def test_linear_propagation_on_a_bridge_without_a_usable_cache(one_thread):
    """Issue 19: once the engine knew a bridge's cache unusable (the toy's bridge keeps none: a native bridge on 4.x,
    or a Hugging Face cache an earlier engine run found empty), linear propagation raised a ConfigError naming
    ungroup_grouped_query_attention (fixed in 899fb25); it takes full forwards, call after call, and gives the hooked
    model's fit where TransformerLens has one."""
    from tvlens.analysis import linear_propagation

    bridge = tv.load_model("toy", backend="bridge")  # a fresh one: no engine run has looked at its cache yet
    v = tv.TaskVector.load(TL39_VECTOR)
    kw = dict(n_copies=24, n_heldout=8, n_queries=4, n=8, cache=False)
    first = linear_propagation(bridge, v, "toy/antonym", **kw)
    assert _backend.suffix_cache_unsupported_reason(bridge)  # known now (on 3.9: found by the first call's prefix)
    again = linear_propagation(bridge, v, "toy/antonym", **kw)
    assert torch.equal(first.W, again.W) and first.fit_r2 == again.fit_r2 and first.injected_acc == again.injected_acc
    if _backend.HAS_HOOKED:
        ref = linear_propagation(tv.load_model("toy", backend="hooked"), v, "toy/antonym", **kw)
        assert (again.W - ref.W).abs().max() < 1e-4 and abs(again.fit_r2 - ref.fit_r2) < 1e-5
        assert again.injected_acc == ref.injected_acc and again.reconstructed_acc == ref.reconstructed_acc
    assert_no_hooks_left(bridge)


@pytest.mark.parametrize("when", ["prefix", "suffix"])
def test_an_ignored_cache_never_makes_a_suffix_run_wrong(toy_tokenizer, tmp_path, monkeypatch, caplog, when):
    """Issue 19: a bridge whose attention silently ignores the Hugging Face cache it is handed (what TransformerLens
    4.3 did with transformers 5's ``cache=``) cannot make a suffix run wrong: the engine checks the cache's length
    after the prefix call and after every suffix run, records the model, and takes full forwards instead."""
    import logging

    from tests.conftest import make_hf_tiny_bridge
    from tvlens import _engine as engine

    model = make_hf_tiny_bridge(toy_tokenizer, tmp_path, seed=3, n_layers=2, n_heads=2)
    assert _backend.is_bridge(model)
    batch = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=2, n=4).tokenize(model)
    edit = tv.TaskVector(3 * torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(0)), (tv.Site(1, -1),))
    with torch.no_grad():
        ref = engine.run(engine.full_width(model, batch, "the oracle"), [_add(edit)]).last()
        ignore = lambda self, k, v, **kw: (k, v)  # noqa: E731  the silent failure: keys and values of this call only
        attn_type = type(model.blocks[0].attn)
        if when == "prefix":
            monkeypatch.setattr(attn_type, "_update_kv_cache", ignore)
        caplog.set_level(logging.INFO, logger="tvlens._engine")
        pre = engine.prefix(model, batch, layer=1)
        if when == "suffix":
            assert pre.fallback is None and pre.c0 > 0  # the prefix was cached; now the runs ignore it
            monkeypatch.setattr(attn_type, "_update_kv_cache", ignore)
        try:
            out = engine.run(pre, [_add(edit)]).last()
        except RuntimeError:  # a run whose attention never saw the prefix may not even fit the mask: also not wrong
            pytest.fail("an ignored cache must fall back, not raise")
    assert (out - ref).abs().max() < 1e-5
    assert engine.cache_unsupported_reason(model) is not None and "cannot serve" in engine.cache_unsupported_reason(model)
    assert any("full forwards" in r.getMessage() for r in caplog.records)
    assert_no_hooks_left(model)


def _add(vector):
    from tvlens._hooks import AddAt

    return AddAt(vector.sites, vector.values)


@pytest.mark.parametrize("shape", [
    dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=64, act_fn="gelu_new", normalization_type="LN"),
    dict(n_layers=2, d_model=32, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64, n_ctx=64, act_fn="silu", gated_mlp=True,
         normalization_type="RMS", positional_embedding_type="rotary"),
], ids=["gpt2", "llama"])
def test_random_hf_bridges_keep_the_prefix_cache(toy_tokenizer, shape):
    """tvlens bench's random models on the bridge: Hugging Face models of the asked shape whose prefix is cached."""
    from tvlens import _engine as engine
    from tvlens.bench import random_hf_bridge

    model = random_hf_bridge(shape, toy_tokenizer, seed=1)
    assert _backend.is_bridge(model) and model.cfg.n_layers == 2 and model.cfg.d_model == 32
    assert (model.cfg.n_key_value_heads or model.cfg.n_heads) == (shape.get("n_key_value_heads") or shape["n_heads"])
    batch = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=2, n=3).tokenize(model)
    with torch.no_grad():
        pre = engine.prefix(model, batch)
        assert pre.fallback is None and pre.c0 > 0
        full = engine.final_residual(model, batch.tokens, batch.attention_mask)[torch.arange(3), batch.last_index]
        assert (pre.final() - full).abs().max() < 1e-5
    with pytest.raises(ModelLoadError, match="no random"):
        random_hf_bridge({**shape, "normalization_type": "LNPre"}, toy_tokenizer)


def test_the_bridges_kept_prefix_is_bit_identical_and_skips_the_prefix_call(toy_tokenizer, tmp_path, monkeypatch):
    """The engine's memo on a bridge: a second evaluation of the same prompts computes no prefix (no empty Hugging
    Face cache is filled) and gives bit-identical results to the memo turned off."""
    from tests.conftest import make_hf_tiny_bridge
    from tvlens import _engine as engine

    model = make_hf_tiny_bridge(toy_tokenizer, tmp_path, seed=4, n_layers=3, n_heads=4, n_key_value_heads=2,
                                positional_embedding_type="rotary", normalization_type="RMS")
    prompts = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=3, n=8)
    v = tv.TaskVector(torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(1)), (tv.Site(1, -1),),
                      model_fingerprint=tv.fingerprint(model), task="toy/antonym")
    filled = []
    real = _backend.new_hf_cache
    monkeypatch.setattr(_backend, "new_hf_cache", lambda *a, **k: filled.append(not a) or real(*a, **k))
    monkeypatch.setattr(engine, "KV_MEMO_BYTES", 0)
    off = [tv.evaluate(model, prompts, intervention=iv, batch_size=4) for iv in (None, tv.steering(model, v))]
    assert model not in engine._KV_MEMO and sum(filled) == 4  # two sub-batches, twice
    monkeypatch.setattr(engine, "KV_MEMO_BYTES", 2**30)
    engine.clear_memo(model)
    tv.evaluate(model, prompts, batch_size=4)  # computes and keeps both sub-batches
    filled.clear()
    on = [tv.evaluate(model, prompts, intervention=iv, batch_size=4) for iv in (None, tv.steering(model, v))]
    assert sum(filled) == 0 and len(engine._KV_MEMO[model]) == 2
    for a, b in zip(off, on):
        assert torch.equal(a.gold_logprob, b.gold_logprob) and torch.equal(a.predicted, b.predicted)
    engine.clear_memo(model)
