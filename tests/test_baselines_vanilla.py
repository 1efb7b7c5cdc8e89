"""Vanilla task vectors: oracle against run_with_cache on a tiny model; steering with both operations."""

import pytest
import torch

import tvlens as tv
from tests.conftest import assert_no_hooks_left


def _hand_residuals(model, prompts, layer):
    """Each prompt alone (no padding) through run_with_cache: the last token's resid_pre at ``layer``."""
    out = []
    for text in prompts.texts:
        _, c = model.run_with_cache(model.to_tokens(text), names_filter=f"blocks.{layer}.hook_resid_pre")
        out.append(c[f"blocks.{layer}.hook_resid_pre"][0, -1])
    return torch.stack(out)


@pytest.mark.parametrize("operation", ["add", "replace"])
def test_vanilla_tv_equals_a_hand_computation(tiny_model, operation):
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    v = tv.vanilla_tv(tiny_model, splits.task, layer=1, shots=3, operation=operation, n_prompts=7, splits=splits)
    icl = _hand_residuals(tiny_model, tv.make_prompts(splits, "train", k=3, n=7), 1)
    expect = icl.mean(0)
    if operation == "add":
        expect = (icl - _hand_residuals(tiny_model, tv.make_prompts(splits, "train", k=0, n=7), 1)).mean(0)
    assert v.method == "vanilla_tv" and v.operation == operation and [str(s) for s in v.sites] == ["L1@-1"]
    assert torch.allclose(v.values[0], expect, atol=1e-5)
    assert expect.abs().max() > 1e-3  # not vacuous
    assert_no_hooks_left(tiny_model)


def test_replace_vector_steers_by_overwriting_the_state(tiny_model):
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    v = tv.vanilla_tv(tiny_model, splits.task, layer=1, shots=2, operation="replace", n_prompts=5, splits=splits)
    ps = tv.make_prompts(splits, "test", k=0, n=4)
    steered = tv.evaluate(tiny_model, ps, intervention=tv.steering(tiny_model, v))
    # oracle: overwrite the last token's resid_pre with the vector by hand, one prompt at a time
    def overwrite(act, hook):
        act[:, -1] = v.values[0]
        return act

    for i, text in enumerate(ps.texts):
        logits = tiny_model.run_with_hooks(tiny_model.to_tokens(text), fwd_hooks=[("blocks.1.hook_resid_pre", overwrite)])
        lp = logits[0, -1].log_softmax(-1)
        assert torch.allclose(lp[steered.gold[i]], steered.gold_logprob[i], atol=1e-4)
    assert_no_hooks_left(tiny_model)


def test_add_vector_round_trips_and_helps_on_the_toy_model(toy_model, tmp_path):
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    v = tv.vanilla_tv(toy_model, splits.task, layer=2, shots=5, splits=splits)
    back = tv.TaskVector.load(v.save(tmp_path / "v.safetensors"))
    assert back.method == "vanilla_tv" and back.operation == "add" and torch.equal(back.values, v.values)
    ps = tv.make_prompts(splits, "test", k=0)
    assert tv.evaluate(toy_model, ps, intervention=tv.steering(toy_model, back)).accuracy >= tv.evaluate(toy_model, ps).accuracy + 0.3


def test_vanilla_tv_bad_inputs(tiny_model):
    with pytest.raises(tv.errors.ConfigError, match="operation"):
        tv.vanilla_tv(tiny_model, "toy/antonym", layer=1, operation="overwrite")
    with pytest.raises(tv.errors.ConfigError, match="shots"):
        tv.vanilla_tv(tiny_model, "toy/antonym", layer=1, shots=0)
    with pytest.raises(tv.errors.TvlensError, match="layer"):
        tv.vanilla_tv(tiny_model, "toy/antonym", layer=7)


@pytest.mark.parametrize("operation", ["replace", "add"])
def test_per_prompt_mode_equals_a_hand_computation(tiny_model, operation):
    """Hendel's per-prompt evaluation: query i steered by the vector of its own demonstrations."""
    import random

    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    res = tv.vanilla_tv_per_prompt(tiny_model, splits.task, layer=1, shots=2, operation=operation, n_dummy=2, splits=splits)
    icl = tv.make_prompts(splits, "test", k=2)
    rng = random.Random("tvlens-hendel-dummies-toy/antonym-0")
    dummies = [rng.sample(splits.train, 2) for _ in icl.queries]
    zs = tv.make_prompts(splits, "test", k=0)
    name = "blocks.1.hook_resid_pre"
    for i in (0, len(zs) - 1):
        hs = []
        for q in dummies[i]:
            _, c = tiny_model.run_with_cache(tiny_model.to_tokens(splits.task.prompt_text(q, icl.demos[i])), names_filter=name)
            h = c[name][0, -1]
            if operation == "add":
                _, c0 = tiny_model.run_with_cache(tiny_model.to_tokens(splits.task.prompt_text(q)), names_filter=name)
                h = h - c0[name][0, -1]
            hs.append(h)
        v = torch.stack(hs).mean(0)

        def hook(act, hook):
            act[:, -1] = v if operation == "replace" else act[:, -1] + v
            return act

        with torch.no_grad():
            logits = tiny_model.run_with_hooks(tiny_model.to_tokens(zs.texts[i]), fwd_hooks=[(name, hook)])
        assert torch.allclose(logits[0, -1].log_softmax(-1)[res.gold[i]], res.gold_logprob[i], atol=1e-4)
    assert res.n == len(zs) and "per-prompt" in res.label
    assert_no_hooks_left(tiny_model)


def test_every_layer_read_once_serves_a_sweep_and_equals_a_pass_per_layer(tiny_model, monkeypatch):
    # residual_at_sites keeps every layer's residual of one prompt set: the numbers are a per-layer pass's, bit for
    # bit; a second layer costs no forward; new weights or an installed hook never see stale numbers
    import copy
    import sys

    from tvlens import _engine as engine

    vmod = sys.modules["tvlens.baselines.vanilla"]
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    ps = tv.make_prompts(splits, "train", k=3, n=9)
    batch = ps.tokenize(tiny_model, padding_side="left")

    def direct(model, layer):
        _, acts = engine.forward(model, batch, names=[f"blocks.{layer}.hook_resid_pre"])
        return acts[f"blocks.{layer}.hook_resid_pre"].cpu()

    model = copy.deepcopy(tiny_model)  # a model of this test's own: the memo is per model
    calls = []
    real = engine.forward
    monkeypatch.setattr(engine, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = {layer: vmod.residual_at_sites(model, ps, [tv.Site(layer, -1)])[:, 0] for layer in range(model.cfg.n_layers)}
    assert len(calls) == 1  # one pass for every layer
    monkeypatch.setattr(engine, "forward", real)
    for layer, x in got.items():
        assert torch.equal(x, direct(model, layer)), layer
    both = vmod.residual_at_sites(model, ps, [tv.Site(0, -1), tv.Site(1, -1)])
    assert torch.equal(both[:, 1], got[1])
    with torch.no_grad():
        model.blocks[0].attn.W_V.mul_(1.5)  # new weights: recomputed, not served from before
    assert torch.equal(vmod.residual_at_sites(model, ps, [tv.Site(1, -1)])[:, 0], direct(model, 1))
    assert not torch.equal(direct(model, 1), got[1])
    v = tv.TaskVector(torch.ones(1, model.cfg.d_model), (tv.Site(0, -1),), model_fingerprint=tv.fingerprint(model))
    with tv.steer(model, v):  # a hook installed: no memo serves, the hooked pass is read
        steered = vmod.residual_at_sites(model, ps, [tv.Site(1, -1)])[:, 0]
        assert torch.equal(steered, direct(model, 1))
    assert not torch.equal(steered, vmod.residual_at_sites(model, ps, [tv.Site(1, -1)])[:, 0])
    assert_no_hooks_left(model)
    # over the memory budget (a large model, long prompts): no all-layer pass, each call reads its own layer
    monkeypatch.setattr(vmod, "_MEMO_MAX_BYTES", 1)
    vmod._RESID_MEMO.pop(model, None)
    calls.clear()
    expect = {layer: direct(model, layer) for layer in (0, 1)}
    monkeypatch.setattr(engine, "forward", lambda *a, **k: calls.append(k["names"]) or real(*a, **k))
    for layer in (0, 1):
        assert torch.equal(vmod.residual_at_sites(model, ps, [tv.Site(layer, -1)])[:, 0], expect[layer])
    assert calls == [["blocks.0.hook_resid_pre"], ["blocks.1.hook_resid_pre"]] and model not in vmod._RESID_MEMO
