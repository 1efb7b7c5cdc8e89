"""The intervention layer (tvlens._hooks, public as tv.interventions): oracles on tiny random models."""

from __future__ import annotations

import pytest
import torch

import tvlens as tv
from tests.conftest import assert_no_hooks_left, make_tiny_model
from tvlens import interventions as iv
from tvlens.errors import ConfigError, PromptError

TEXTS = ["kevi -> vitilu , keso ->", "kevi ->", "1 2 -> maybe , 3 3 ->"]
RESID = "blocks.1.hook_resid_pre"
Z = "blocks.1.attn.hook_z"


@pytest.fixture(scope="module")
def gqa_model(toy_tokenizer):
    return make_tiny_model(toy_tokenizer, n_heads=4, n_key_value_heads=2, positional_embedding_type="rotary",
                           normalization_type="RMS", seed=3)


def values(model, n, seed=0):
    return torch.randn(n, model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


def batch(model, side):
    return tv.tokenize_prompts(model, TEXTS, [" x"] * len(TEXTS), padding_side=side)


def real_logits(logits, b):
    """Logits of every real token, row by row, concatenated (comparable across padding sides)."""
    return torch.cat([logits[i][b.attention_mask[i].bool()] for i in range(len(b))])


def test_add_equals_a_hand_written_hook(tiny_model):
    v = values(tiny_model, 3)
    sites = [tv.Site(0, -1), tv.Site(1, 2), tv.Site(1, -1)]
    toks = tiny_model.to_tokens(TEXTS[0])

    def h0(x, hook):
        x = x.clone()
        x[:, -1] += 0.5 * v[0]
        return x

    def h1(x, hook):
        x = x.clone()
        x[:, 2] += 0.5 * v[1]
        x[:, -1] += 0.5 * v[2]
        return x

    with torch.no_grad():
        ref = tiny_model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_pre", h0), (RESID, h1)])
        with iv.add(tiny_model, sites, v, scale=0.5):
            got = tiny_model(toks)
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(got, tiny_model(toks))
    assert_no_hooks_left(tiny_model)


def test_two_sites_on_one_column_both_add_and_the_later_replace_wins(tiny_model):
    toks = tiny_model.to_tokens("kevi ->")  # 3 tokens: position 2 is position -1
    v = values(tiny_model, 2)
    sites = [tv.Site(1, -1), tv.Site(1, 2)]
    with torch.no_grad(), iv.cache(tiny_model, RESID) as clean:
        tiny_model(toks)
    with torch.no_grad(), iv.add(tiny_model, sites, v), iv.cache(tiny_model, RESID) as added:
        tiny_model(toks)
    with torch.no_grad(), iv.replace(tiny_model, sites, v), iv.cache(tiny_model, RESID) as replaced:
        tiny_model(toks)
    torch.testing.assert_close(added[RESID][0, -1], clean[RESID][0, -1] + v[0] + v[1])
    torch.testing.assert_close(replaced[RESID][0, -1], v[1])
    assert torch.equal(replaced[RESID][0, :-1], clean[RESID][0, :-1])


def zero_head_reference(model, toks, layer, head, mask=None):
    """attn_out recomputed by hand from the clean hook_z with one head's z removed."""
    _, cache = model.run_with_cache(toks, attention_mask=mask)
    z = cache[f"blocks.{layer}.attn.hook_z"].clone()  # [batch, pos, head, d_head]
    z[:, :, head] = 0
    return torch.einsum("bphd,hdm->bpm", z, model.W_O[layer]) + model.b_O[layer]  # [batch, pos, d_model]


@pytest.mark.parametrize("which", ["tiny_model", "gqa_model"])
def test_zero_ablating_a_head_equals_recomputing_attention_without_it(which, request):
    model = request.getfixturevalue(which)
    toks = model.to_tokens(TEXTS[0])
    ref = zero_head_reference(model, toks, 1, 1)
    with torch.no_grad(), iv.ablate_heads(model, [(1, 1)]), iv.cache(model, ["blocks.1.hook_attn_out", Z]) as acts:
        model(toks)
    torch.testing.assert_close(acts["blocks.1.hook_attn_out"], ref, atol=1e-5, rtol=1e-5)
    assert acts[Z][:, :, 1].abs().max() == 0 and acts[Z][:, :, 0].abs().max() > 0
    assert_no_hooks_left(model)


def test_mean_ablation_writes_the_mean_over_real_tokens(tiny_model):
    b = batch(tiny_model, "left")
    with torch.no_grad(), iv.cache(tiny_model, Z) as ref:
        tiny_model(b.tokens, attention_mask=b.attention_mask)
    real = b.attention_mask.bool()
    mean = ref[Z][real].mean(0)  # [head, d_head]
    torch.testing.assert_close(ref.head_means()[1], mean)
    toks = tiny_model.to_tokens(TEXTS[1])
    with torch.no_grad(), iv.ablate_heads(tiny_model, [(1, 0)], how="mean", means=ref.head_means()), \
            iv.cache(tiny_model, Z) as acts:
        tiny_model(toks)
    torch.testing.assert_close(acts[Z][0, :, 0], mean[0].expand(toks.shape[1], -1))
    _, clean = tiny_model.run_with_cache(toks)
    torch.testing.assert_close(acts[Z][:, :, 1], clean[Z][:, :, 1])


def test_ablation_at_a_position_touches_only_that_column(tiny_model):
    toks = tiny_model.to_tokens(TEXTS[0])
    _, clean = tiny_model.run_with_cache(toks)
    with torch.no_grad(), iv.ablate_heads(tiny_model, [(1, 0)], positions=[-1]), iv.cache(tiny_model, Z) as acts:
        tiny_model(toks)
    assert acts[Z][0, -1, 0].abs().max() == 0
    torch.testing.assert_close(acts[Z][0, :-1], clean[Z][0, :-1])


def test_patching_a_run_into_itself_is_the_identity(tiny_model):
    b = batch(tiny_model, "left")
    run = lambda: tiny_model(b.tokens, attention_mask=b.attention_mask)  # noqa: E731
    with torch.no_grad(), iv.cache(tiny_model, [RESID, Z]) as src:
        clean = run()
    with torch.no_grad():
        for kw in ({}, {"positions": [-1, 1]}):
            with iv.patch(tiny_model, src, [RESID, Z], **kw):
                assert torch.equal(run(), clean)
        with iv.patch(tiny_model, src, Z, positions=[-1], heads=[0]):
            assert torch.equal(run(), clean)


def test_patching_from_another_run_equals_a_hand_written_hook(tiny_model):
    src_b, dst_b = batch(tiny_model, "left"), batch(tiny_model, "right")
    with torch.no_grad(), iv.cache(tiny_model, RESID) as src:
        tiny_model(src_b.tokens, attention_mask=src_b.attention_mask)
    donor = src[RESID][torch.arange(3), src_b.last_index]  # [batch, d_model]

    def hook(x, hook):
        x = x.clone()
        x[torch.arange(3), dst_b.last_index] = donor
        return x

    perm = dst_b.tokens[[1, 2, 0]]  # other prompts in the target rows
    perm_mask = dst_b.attention_mask[[1, 2, 0]]
    last = (perm_mask.sum(-1) - 1)
    dst_b = tv.PromptBatch(perm, perm_mask, last, dst_b.answer_ids, dst_b.answer_tokens, "right")
    with torch.no_grad():
        ref = tiny_model.run_with_hooks(perm, attention_mask=perm_mask, fwd_hooks=[(RESID, hook)])
        with iv.patch(tiny_model, src, RESID, positions=[-1]):
            got = tiny_model(perm, attention_mask=perm_mask)
    torch.testing.assert_close(got, ref)


def interventions(model, src):
    v = values(model, 2)
    sites = [tv.Site(0, -1), tv.Site(1, 1)]
    return {
        "add": lambda: iv.add(model, sites, v),
        "replace": lambda: iv.replace(model, sites, v),
        "ablate_zero": lambda: iv.ablate_heads(model, [(0, 1), (1, 0)], positions=[-1, 2]),
        "ablate_mean": lambda: iv.ablate_heads(model, [(1, 1)], how="mean", means=src.head_means()),
        "patch": lambda: iv.patch(model, src, [RESID], positions=[-2]),
        "patch_heads": lambda: iv.patch(model, src, Z, positions=[-1], heads=[1]),
        "cache": lambda: iv.cache(model, [RESID, Z]),
    }


@pytest.fixture(scope="module")
def source(tiny_model):
    b = tv.tokenize_prompts(tiny_model, TEXTS[::-1], [" x"] * 3, padding_side="left")
    with torch.no_grad(), iv.cache(tiny_model, [RESID, Z]) as src:
        tiny_model(b.tokens, attention_mask=b.attention_mask)
    return src


@pytest.mark.parametrize("kind", ["add", "replace", "ablate_zero", "ablate_mean", "patch", "patch_heads", "cache"])
def test_left_and_right_padding_agree_on_real_tokens(tiny_model, source, kind):
    make = interventions(tiny_model, source)[kind]
    out = {}
    with torch.no_grad():
        for side in ("left", "right"):
            b = batch(tiny_model, side)
            with make():
                out[side] = real_logits(tiny_model(b.tokens, attention_mask=b.attention_mask), b)
        plain = real_logits(tiny_model(b.tokens, attention_mask=b.attention_mask), b)
    torch.testing.assert_close(out["left"], out["right"], atol=1e-4, rtol=1e-4)
    assert (kind == "cache") == torch.allclose(out["right"], plain)  # every edit changes something


@pytest.mark.parametrize("kind", ["add", "replace", "ablate_zero", "ablate_mean", "patch", "patch_heads", "cache"])
def test_no_hook_survives_success_exception_or_interrupt(tiny_model, source, kind):
    make = interventions(tiny_model, source)[kind]
    b = batch(tiny_model, "left")
    with make():
        tiny_model(b.tokens, attention_mask=b.attention_mask)
        assert tiny_model.hook_dict["hook_embed"].fwd_hooks  # hooks were on
    assert_no_hooks_left(tiny_model)
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with make():
                tiny_model(b.tokens, attention_mask=b.attention_mask)
                raise exc("boom")
        assert_no_hooks_left(tiny_model)


def test_an_error_inside_a_hook_leaves_no_hook(tiny_model):
    with pytest.raises(PromptError, match="position 40"):
        with iv.add(tiny_model, [tv.Site(1, 40)], values(tiny_model, 1)):
            tiny_model(tiny_model.to_tokens(TEXTS[1]))
    assert_no_hooks_left(tiny_model)


def test_right_padded_text_without_a_mask_is_steered_per_prompt(tiny_model):
    v = values(tiny_model, 1)
    with torch.no_grad(), iv.add(tiny_model, [tv.Site(1, -1)], v):
        logits = tiny_model(TEXTS, padding_side="right")  # TransformerLens builds no mask here
        for i, text in enumerate(TEXTS):
            alone = tiny_model(text)[0]
            torch.testing.assert_close(logits[i, : len(alone)], alone, atol=1e-4, rtol=1e-4)


def test_explicit_span_overrides_the_mask(tiny_model):
    toks = tiny_model.to_tokens(TEXTS[0])  # treat the first 4 tokens as the prompt, the rest as answer
    v = values(tiny_model, 1)
    span = iv.Span(torch.tensor([0]), torch.tensor([3]))
    with torch.no_grad(), iv.add(tiny_model, [tv.Site(1, -1)], v, span=span), iv.cache(tiny_model, RESID) as got:
        tiny_model(toks)
    _, clean = tiny_model.run_with_cache(toks)
    delta = got[RESID] - clean[RESID]
    torch.testing.assert_close(delta[0, 3], v[0])
    assert delta[0, :3].abs().max() == 0


def test_edits_compose_in_one_context_and_in_evaluate(tiny_model):
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=1)
    v = values(tiny_model, 1)
    vec = tv.TaskVector(v, (tv.Site(1, -1),), d_model=tiny_model.cfg.d_model, n_layers=tiny_model.cfg.n_layers)
    a = tv.evaluate(tiny_model, ps, intervention=iv.AddAt((tv.Site(1, -1),), v))
    b = tv.evaluate(tiny_model, ps, intervention=tv.steering(tiny_model, vec), batch_size=7)
    torch.testing.assert_close(a.gold_logprob, b.gold_logprob, atol=1e-5, rtol=1e-5)
    both = tv.evaluate(tiny_model, ps, intervention=[iv.AddAt((tv.Site(1, -1),), v), iv.AblateHeads(((0, 0),))])
    assert not torch.allclose(both.gold_logprob, a.gold_logprob)
    assert_no_hooks_left(tiny_model)


def test_clear_errors(tiny_model, source):
    with pytest.raises(ConfigError, match="outside"):
        iv.ablate_heads(tiny_model, [(0, 7)]).__enter__()
    with pytest.raises(ConfigError, match="means"):
        iv.AblateHeads(((0, 0),), how="mean")
    with pytest.raises(ConfigError, match="no activations"):
        iv.PatchFrom(source, ("blocks.0.hook_resid_post",))
    with pytest.raises(ConfigError, match="do not exist"):
        iv.cache(tiny_model, "blocks.9.hook_nothing").__enter__()
    with iv.cache(tiny_model, "hook_embed") as embedded:
        tiny_model(tiny_model.to_tokens(TEXTS[0]))
    with pytest.raises(ConfigError, match="inside blocks"):
        with iv.patch(tiny_model, embedded, "hook_embed"):
            tiny_model(tiny_model.to_tokens(TEXTS[0]))
    assert_no_hooks_left(tiny_model)


def test_generation_with_a_kv_cache_matches_without(tiny_model):
    """Ablation during generate: same tokens with and without the cache (positions span steps)."""
    outs = []
    for use_cache in (True, False):
        with iv.ablate_heads(tiny_model, [(1, 0), (0, 1)], positions=[-1]):
            outs.append(tiny_model.generate(TEXTS[:2], max_new_tokens=5, do_sample=False, use_past_kv_cache=use_cache,
                                            verbose=False, return_type="tokens"))
    assert torch.equal(outs[0], outs[1])
    assert_no_hooks_left(tiny_model)


@pytest.mark.parametrize("policy", ["prompt", "every_token"])
def test_steered_generation_on_a_gqa_rotary_model_same_with_and_without_kv_cache(gqa_model, policy):
    v = values(gqa_model, 2, seed=5) * 4
    sites = [tv.Site(1, -1), tv.Site(0, 1)]
    outs = []
    for use_cache in (True, False):
        with iv.add(gqa_model, sites, v, generation=policy):
            outs.append(gqa_model.generate(TEXTS[:2], max_new_tokens=5, do_sample=False, use_past_kv_cache=use_cache,
                                           verbose=False, return_type="tokens"))
    assert torch.equal(outs[0], outs[1])
    plain = gqa_model.generate(TEXTS[:2], max_new_tokens=5, do_sample=False, verbose=False, return_type="tokens")
    assert not torch.equal(plain, outs[0])
    assert_no_hooks_left(gqa_model)


def test_a_forward_split_at_a_layer_is_steered_like_a_whole_one(tiny_model):
    b = batch(tiny_model, "right")
    v = values(tiny_model, 2)
    sites = [tv.Site(0, -1), tv.Site(1, -2)]
    from tvlens._engine import final_residual  # stop/start_at_layer with the same meaning on either backend

    with torch.no_grad(), iv.add(tiny_model, sites, v):
        whole = final_residual(tiny_model, b.tokens, b.attention_mask)
        mid = final_residual(tiny_model, b.tokens, b.attention_mask, stop_at_layer=1)
        split = final_residual(tiny_model, mid, b.attention_mask, start_at_layer=1)
        other = final_residual(tiny_model, mid[:2], b.attention_mask[:2], start_at_layer=1)  # another call, other rows
    torch.testing.assert_close(split, whole)
    torch.testing.assert_close(other, whole[:2])


def test_set_head_per_row_patches_one_head_per_row_and_leaves_no_hook(tiny_model):
    """Row b's head heads[b] gets values[b] at the last token; other rows and heads are untouched."""
    from tvlens.interventions import SetHeadPerRow, cache, intervene

    toks = tiny_model.to_tokens(["kevi -> tiso", "kevi -> tiso"])
    heads = torch.tensor([[1, 0], [-1, 0]])  # row 0: layer 1 head 0; row 1: no patch
    values = torch.full((2, tiny_model.cfg.d_head), 5.0)
    with intervene(tiny_model, SetHeadPerRow(heads, values)), cache(tiny_model, "blocks.1.attn.hook_z") as acts:
        tiny_model(toks)
    z = acts["blocks.1.attn.hook_z"]  # [batch, pos, head, d_head]
    assert torch.all(z[0, -1, 0] == 5.0) and not torch.all(z[1, -1, 0] == 5.0)
    assert not torch.all(z[0, -2, 0] == 5.0) and not torch.all(z[0, -1, 1] == 5.0)
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(tiny_model, SetHeadPerRow(heads, values)):
            raise RuntimeError("boom")
    with pytest.raises(tv.errors.ConfigError, match="rows"):
        with intervene(tiny_model, SetHeadPerRow(heads, values)):
            tiny_model(toks[:1])
    assert_no_hooks_left(tiny_model)
