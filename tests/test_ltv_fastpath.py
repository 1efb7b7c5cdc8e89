"""Oracle: the prefix-cached fast path equals the naive full forward + backward."""

import pytest
import torch

import tvlens as tv
from tests.conftest import assert_objectives_agree
from tvlens.ltv import FastObjective, NaiveObjective, build_targets

SITE_SETS = {
    "single_last": ((1, -1),),
    "multi_pos": ((1, -3), (1, -2), (1, -1)),
    "multi_layer": ((0, -1), (2, -2), (2, -1)),
    "absolute": ((1, 2),),
}


def _check(model, prompts, sites, side, multi_token=True):
    sites = tuple(tv.Site(*s) for s in sites)
    tb = build_targets(model, prompts, padding_side=side, multi_token=multi_token)
    theta = (0.3 * torch.randn(len(sites), model.cfg.d_model, generator=torch.Generator().manual_seed(0))).requires_grad_()
    naive, fast = NaiveObjective(model, tb, sites), FastObjective(model, tb, sites)
    # minibatches may repeat rows (small splits, large epochs)
    assert_objectives_agree(naive, fast, theta, (None, torch.tensor([3, 0, 2]), torch.arange(len(tb)).repeat(2)))
    return fast


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("sites", list(SITE_SETS.values()), ids=list(SITE_SETS))
@pytest.mark.parametrize("k", [0, 2])
def test_fast_equals_naive_on_tiny_model(toy_tokenizer, tmp_path, sites, side, k):
    from tests.conftest import make_cached_tiny_model

    model = make_cached_tiny_model(toy_tokenizer, tmp_path, n_layers=3)
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "train", k=k, n=8)
    fast = _check(model, ps, sites, side)
    assert fast.l0 == min(s[0] for s in sites)


def test_fast_equals_naive_with_multi_token_answers(toy_tokenizer, tmp_path):
    from tests.conftest import make_cached_tiny_model

    model = make_cached_tiny_model(toy_tokenizer, tmp_path, n_layers=3)
    words = [e.inputs["x"] for e in tv.tasks.get("toy/antonym").examples[:16]]  # distinct inputs
    outs = ["vitilu keso", "kevi", "tipese kevi keso", "food"]  # answers of 1 to 3 tokens
    pairs = [(w, outs[i % 4]) for i, w in enumerate(words)]
    task = tv.tasks.from_pairs("multi", pairs, template="{x} ->", separator=" , ")
    ps = tv.make_prompts(tv.make_splits(task), "train", k=1)
    tb = build_targets(model, ps, padding_side="left")
    assert len(tb.tgt_row) > len(tb)  # several targets for some rows
    for side in ("left", "right"):
        _check(model, ps, ((1, -1), (2, -2)), side)


@pytest.mark.parametrize("side", ["left", "right"])
def test_fast_equals_naive_on_embedded_model(toy_model, side):
    from tvlens.ltv._objective import fast_path_unsupported_reason

    if reason := fast_path_unsupported_reason(toy_model):  # the toy on 4.x: a bridge over the native model
        with pytest.raises(tv.errors.ConfigError, match="the fast path cannot run on this model"):
            FastObjective(toy_model, build_targets(toy_model, tv.make_prompts(tv.make_splits(tv.tasks.get("toy/capital")), "train", n=4)),
                          (tv.Site(2, -1),))
        pytest.skip(f"no fast path on this backend's toy: {reason}")
    for k, sites in ((0, ((2, -1),)), (8, ((1, -1), (2, -1))), (4, ((2, -3), (2, -1)))):
        ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/capital")), "train", k=k, n=12)
        _check(toy_model, ps, sites, side)


@pytest.mark.parametrize("policy", ["skip", "clip"])
def test_fast_equals_naive_when_sites_fall_outside_short_prompts(toy_tokenizer, tmp_path, policy):
    from tests.conftest import make_cached_tiny_model

    model = make_cached_tiny_model(toy_tokenizer, tmp_path, n_layers=3)
    sites = tuple(tv.Site(1, p) for p in (-5, -4, -3, -2, -1)) + (tv.Site(2, 4),)
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "train", k=0, n=8)  # 3-token prompts
    for side in ("left", "right"):
        tb = build_targets(model, ps, padding_side=side)
        theta = torch.randn(len(sites), model.cfg.d_model, generator=torch.Generator().manual_seed(1)).requires_grad_()
        ln, _, _ = NaiveObjective(model, tb, sites, policy).loss(theta)
        lf, _, _ = FastObjective(model, tb, sites, policy).loss(theta)
        (gn,) = torch.autograd.grad(ln, theta)
        (gf,) = torch.autograd.grad(lf, theta)
        assert abs(ln.item() - lf.item()) < 1e-5 and (gn - gf).abs().max() < 1e-5
        absent = gn.abs().sum(-1) == 0
        assert absent.tolist() == ([True, True, False, False, False, True] if policy == "skip" else [False] * 6)


ENGINE_ARCHS = ["ln", "lnpre", "gqa_rms", "shortformer"]


@pytest.mark.parametrize("lean", [None, False], ids=["auto", "blocks"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ENGINE_ARCHS)
def test_engine_objective_gradients_equal_the_full_forward_on_the_tiny_archs(toy_tokenizer, tmp_path, arch, side, lean):
    """FastObjective is a suffix run on the engine: loss and d loss / d theta equal the naive full forward (1e-5)."""
    from tests.conftest import TINY_ARCHS, assert_no_hooks_left, make_cached_tiny_model

    kw = TINY_ARCHS.get(arch) or dict(n_layers=3, n_heads=2, positional_embedding_type="shortformer")
    model = make_cached_tiny_model(toy_tokenizer, tmp_path, seed=12, **kw)
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "train", k=2, n=8)  # mixed lengths
    sites = (tv.Site(1, -2), tv.Site(1, -1), tv.Site(2, -1))
    tb = build_targets(model, ps, padding_side=side)
    theta = (0.5 * torch.randn(len(sites), model.cfg.d_model, generator=torch.Generator().manual_seed(2))).requires_grad_()
    fast = FastObjective(model, tb, sites, lean=lean)
    assert (fast.lean is not None) == (lean is None and arch != "shortformer" and fast.pre.lean), fast.lean_reason
    assert fast.pre.fallback is None and fast.pre.width < tb.tokens.shape[1]  # a real suffix
    assert_objectives_agree(NaiveObjective(model, tb, sites), fast, theta, (None, torch.tensor([6, 1, 1, 3])))
    assert_no_hooks_left(model)
