"""Oracle: the lean suffix stack equals the naive path on every architecture family it covers,
and the fast path falls back to TransformerLens's blocks (still exact) on those it does not."""

import pytest
import torch

import tvlens as tv
from tests.conftest import assert_objectives_agree
from tvlens import _backend
from tvlens.errors import ConfigError
from tvlens.ltv import FastObjective, NaiveObjective, build_targets

pytestmark = pytest.mark.skipif(not _backend.HAS_HOOKED, reason="the lean blocks are built from HookedTransformer's "
                                "components (TransformerLens 3.x); on a bridge suffix runs take its own blocks")

ARCHS = {
    "gpt2_like": {},
    "llama_like": dict(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=1,
                       gated_mlp=True, act_fn="silu", final_rms=True),
    "neox_parallel_partial_rotary": dict(positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True),
    "gptj_adjacent_rotary": dict(positional_embedding_type="rotary", rotary_dim=8, rotary_adjacent_pairs=True,
                                 parallel_attn_mlp=True),
    "lnpre_softcaps": dict(normalization_type="LNPre", attn_scores_soft_cap=2.0, output_logits_soft_cap=5.0),
    "rmspre": dict(normalization_type="RMSPre"),
    "attn_only_no_norm": dict(attn_only=True, normalization_type=None),
}


def _model(toy_tokenizer, **kw):
    """A tiny random model whose every parameter (biases and norm weights too) is perturbed."""
    from tests.conftest import make_tiny_model

    model = make_tiny_model(toy_tokenizer, n_layers=3, d_model=16, n_heads=2, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _agree(model, ps, sites, side, **fast_kw):
    tb = build_targets(model, ps, padding_side=side)
    theta = (0.5 * torch.randn(len(sites), model.cfg.d_model, generator=torch.Generator().manual_seed(0))).requires_grad_()
    naive, fast = NaiveObjective(model, tb, sites), FastObjective(model, tb, sites, **fast_kw)
    assert_objectives_agree(naive, fast, theta, (None, torch.tensor([5, 1, 2, 7])))
    return fast


@pytest.fixture(scope="module")
def prompts():
    return tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "train", k=2, n=8)


@pytest.mark.parametrize("arch", list(ARCHS), ids=list(ARCHS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_lean_stack_equals_naive(toy_tokenizer, prompts, arch, side):
    model = _model(toy_tokenizer, **ARCHS[arch])
    for sites in ((tv.Site(1, -2), tv.Site(1, -1), tv.Site(2, -1)), (tv.Site(0, 3),)):
        fast = _agree(model, prompts, sites, side)
        assert fast.lean is not None, fast.lean_reason  # the lean stack really ran


def test_transformerlens_blocks_path_still_exact(toy_tokenizer, prompts):
    model = _model(toy_tokenizer, **ARCHS["llama_like"])
    fast = _agree(model, prompts, (tv.Site(1, -1),), "left", lean=False)
    assert fast.lean is None and fast.lean_reason == "lean=False"


@pytest.mark.parametrize("kw, reason", [
    (dict(positional_embedding_type="shortformer"), "shortformer"),
    (dict(positional_embedding_type="alibi"), "alibi"),
])
def test_uncovered_architecture_falls_back_exactly(toy_tokenizer, prompts, kw, reason):
    model = _model(toy_tokenizer, **kw)
    fast = _agree(model, prompts, (tv.Site(1, -1),), "left")
    assert fast.lean is None and reason in fast.lean_reason
    tb = build_targets(model, prompts)
    with pytest.raises(ConfigError, match="lean"):
        FastObjective(model, tb, (tv.Site(1, -1),), lean=True)


def test_ungrouped_gqa_trains_on_the_naive_path(toy_tokenizer, caplog):
    """TransformerLens 3.9 cannot KV-cache ungrouped GQA: FastObjective says so, train_ltv falls back."""
    from tvlens.ltv import LTVConfig
    from tvlens.ltv._objective import make_objective

    model = _model(toy_tokenizer, n_key_value_heads=1, ungroup_grouped_query_attention=True)
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "train", k=0, n=4)
    tb = build_targets(model, ps)
    with pytest.raises(ConfigError, match="fast=False"):
        FastObjective(model, tb, (tv.Site(1, -1),))
    with caplog.at_level("WARNING", logger="tvlens.ltv._objective"):
        assert isinstance(make_objective(model, tb, (tv.Site(1, -1),)), NaiveObjective)
    assert "naive path" in caplog.text
    res = tv.train_ltv(model, "toy/antonym", layers=1, config=LTVConfig(max_epochs=1, epoch_size=8, batch_size=4), progress=False)
    assert res.steps == 2 and torch.isfinite(res.vector.values).all()


def test_lean_stack_grows_the_rotary_tables_like_transformerlens(toy_tokenizer, prompts, monkeypatch):
    """TransformerLens builds short rotary tables and extends them on demand; so must the lean stack."""
    from transformer_lens.components.abstract_attention import AbstractAttention

    monkeypatch.setattr(AbstractAttention, "ROTARY_INITIAL_CACHE_SIZE", 4)
    model = _model(toy_tokenizer, **ARCHS["llama_like"])
    assert model.blocks[1].attn.rotary_cos.shape[0] == 4 < build_targets(model, prompts).tokens.shape[1]
    fast = _agree(model, prompts, (tv.Site(1, -1), tv.Site(2, -1)), "left")
    assert fast.lean is not None
