"""Per-head OV products and OV reconstruction: oracles on tiny models (LN, RMS + GQA), behaviour on the toy model."""

from __future__ import annotations

import pytest
import torch

import tvlens as tv
from tests.conftest import TINY_ARCHS, assert_no_hooks_left, make_tiny_model
from tvlens import _backend
from tvlens import interventions as iv
from tvlens.analysis import OVProducts, OVReconstruction, ov_products, ov_reconstruction
from tvlens.errors import ConfigError

ARCHS = TINY_ARCHS


@pytest.fixture(scope="module", params=list(ARCHS))
def model(request, toy_tokenizer):
    return make_tiny_model(toy_tokenizer, seed=1, **ARCHS[request.param])


@pytest.fixture(scope="module")
def prompts():
    return tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", n=3)


def vec(model, layer, seed=0, scale=3.0):
    theta = scale * torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return tv.TaskVector(theta, (tv.Site(layer, -1),), task="toy/antonym", model_fingerprint=tv.fingerprint(model))


def attn_out_change(model, vector, one, layer):
    """Attention output at the last token of block ``layer``: with θ minus without θ, with the attention
    patterns and ln1 scale of that block frozen to the run with θ (a hand-written reference)."""
    batch = one.tokenize(model)
    frozen = [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.ln1.hook_scale"]
    out = f"blocks.{layer}.hook_attn_out"
    span = iv.Span(batch.first_index, batch.last_index)
    with iv.cache(model, frozen + [out], span=span) as a, tv.steer(model, vector):
        model(batch.tokens, attention_mask=batch.attention_mask)
    with iv.intervene(model, iv.PatchFrom(a, tuple(frozen)), span=span):
        with iv.cache(model, [out], span=span) as b:
            model(batch.tokens, attention_mask=batch.attention_mask)
    last = batch.last_index
    return (a[out][0, last[0]] - b[out][0, last[0]]).float()


def test_products_sum_to_attention_output_change_with_frozen_patterns(model, prompts):
    # θ injected at each layer in turn: block l's attention output at N changes by Σ_h A_h[N, N] * product_h,
    # once its patterns and ln1 scale are frozen (one prompt: the means over prompts are exact)
    for layer in range(model.cfg.n_layers):
        v = vec(model, layer, seed=layer)
        for i in range(len(prompts)):
            one = prompts.subset([i])
            ov = ov_products(model, v, ln="actual", prompts=one)
            got = ov.weighted()[layer].sum(0)
            want = attn_out_change(model, v, one, layer)
            assert want.norm() > 1e-3  # the check is not vacuous
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert_no_hooks_left(model)


def test_theta_before_the_last_token(model, prompts):
    # θ at position -2: the heads' attention from N to N-1 and the ln1 scale at N-1 weigh the products
    theta = 3.0 * torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(9))
    v = tv.TaskVector(theta, (tv.Site(1, -2),), model_fingerprint=tv.fingerprint(model))
    one = prompts.subset([0])
    ov = ov_products(model, v, ln="actual", prompts=one)
    torch.testing.assert_close(ov.weighted()[1].sum(0), attn_out_change(model, v, one, 1), atol=1e-4, rtol=1e-4)


def test_gqa_heads_use_their_groups_value_weights(toy_tokenizer):
    model = make_tiny_model(toy_tokenizer, seed=1, **ARCHS["gqa_rms"])
    ov = ov_products(model, vec(model, 0))
    w_v = _backend.grouped_weight(model, 1, "W_V").detach()  # [kv_head, d_model, d_head] as the model stores it
    group = model.cfg.n_heads // model.cfg.n_key_value_heads
    theta = ov.theta * model.blocks[1].ln1.w.detach()
    for h in range(model.cfg.n_heads):
        want = theta @ w_v[h // group] @ model.blocks[1].attn.W_O[h].detach()
        torch.testing.assert_close(ov.products[1, h], want, atol=1e-5, rtol=1e-5)


def test_actual_equals_folded_times_mean_inverse_scale(model, prompts):
    v = vec(model, 1)
    folded = ov_products(model, v, prompts=prompts)
    actual = ov_products(model, v, ln="actual", prompts=prompts)
    assert folded.inv_scale[1:].eq(1).all() and not actual.inv_scale[1:].eq(1).any()
    torch.testing.assert_close(actual.products, folded.products * actual.inv_scale[:, None, None])
    torch.testing.assert_close(actual.attention, folded.attention, equal_nan=True)


def test_layers_before_injection_are_zero_and_flagged(model):
    ov = ov_products(model, vec(model, 1))
    assert not ov.valid[0] and ov.valid[1:].all()
    assert ov.products[0].eq(0).all() and ov.products[1:].abs().sum() > 0
    df = ov.to_frame()
    assert set(df.columns) >= {"layer", "head", "ov_norm", "cos_theta", "label_proj"}
    assert sorted(set(df.layer)) == list(range(1, model.cfg.n_layers)) and len(df) == (model.cfg.n_layers - 1) * model.cfg.n_heads
    assert df.label_proj.isna().all()  # no prompts: no answer tokens to project on
    with pytest.raises(ConfigError, match="before the injection layer"):
        ov.decoded(0, 0)
    only = ov_products(model, vec(model, 1), layers=[2])
    assert only.valid.tolist() == [False, False, True]
    torch.testing.assert_close(only.products[2], ov.products[2])


def test_zero_vector_gives_zero_products_and_no_accuracy_change(toy_model):
    zero = tv.TaskVector(torch.zeros(1, toy_model.cfg.d_model), (tv.Site(2, -1),), model_fingerprint=tv.fingerprint(toy_model))
    ov = ov_products(toy_model, zero, ln="actual", task="toy/antonym")
    assert ov.products.eq(0).all()
    rec = ov_reconstruction(toy_model, zero, "toy/antonym")
    assert rec.ltv == rec.zero_shot == rec.variant_a == rec.variant_b == rec.variant_a_weighted == rec.mlp_control == rec.attn_path
    assert_no_hooks_left(toy_model)


def test_reconstruction_on_the_embedded_model(toy_model):
    v = tv.train_ltv(toy_model, "toy/antonym", progress=False).vector
    rec = ov_reconstruction(toy_model, v, "toy/antonym")
    assert isinstance(rec, OVReconstruction)
    assert rec.ltv >= 0.9 and rec.zero_shot <= 0.2  # the LTV works, zero-shot does not
    df = rec.to_frame()
    assert df.accuracy.between(0, 1).all() and len(df) == 9
    ov = ov_products(toy_model, v, task="toy/antonym")
    assert isinstance(ov, OVProducts) and len(ov.decoded(2, 1, 5)) == 5
    assert ov.to_frame().label_proj.notna().all() and ov.to_frame().attention.between(0, 1).all()
    assert "<table" in ov._repr_html_() and ov.plot() is not None and rec.plot() is not None
    again = OVProducts.from_json(ov.to_json())
    torch.testing.assert_close(again.products, ov.products)
    assert again.decoded(3, 0, 3) == ov.decoded(3, 0, 3)


def test_bad_inputs_are_typed_errors(model, prompts):
    v = vec(model, 1)
    with pytest.raises(ConfigError, match="prompts="):
        ov_products(model, v, ln="actual")
    with pytest.raises(ConfigError, match="ln"):
        ov_products(model, v, ln="exact")
    with pytest.raises(ConfigError, match="layers"):
        ov_products(model, v, layers=[0])
    two = tv.TaskVector(torch.randn(2, model.cfg.d_model), (tv.Site(0, -1), tv.Site(1, -1)), model_fingerprint=tv.fingerprint(model))
    with pytest.raises(ConfigError, match="one layer"):
        ov_products(model, two)
    with pytest.raises(ConfigError, match="task"):
        ov_reconstruction(model, v)


@pytest.mark.real_model
def test_real_model_products_match_the_attention_output_change(smollm2):
    # SmolLM2: folded RMSNorm (RMSPre), 9 query heads sharing 3 value heads; θ at layer 15, one capitalize query
    one = tv.make_prompts(tv.make_splits(tv.tasks.get("capitalize")), "test", n=1)
    v = vec(smollm2, 15, scale=2.0)
    ov = ov_products(smollm2, v, ln="actual", prompts=one, layers=[15, 16])
    want = attn_out_change(smollm2, v, one, 15)
    assert want.norm() > 1e-2
    torch.testing.assert_close(ov.weighted()[15].sum(0), want, atol=2e-3, rtol=1e-3)
    group = smollm2.cfg.n_heads // smollm2.cfg.n_key_value_heads
    w_v = _backend.grouped_weight(smollm2, 16, "W_V").detach()
    raw = ov_products(smollm2, v, layers=[16]).products[16]
    for h in (0, group, 2 * group + 1):
        torch.testing.assert_close(raw[h], ov.theta @ w_v[h // group] @ smollm2.blocks[16].attn.W_O[h].detach(), atol=1e-3, rtol=1e-4)
    assert_no_hooks_left(smollm2)
