"""The engine's model head: final_logits keeps W_U.T contiguous once, with the module's numbers bit for bit."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_ARCHS, make_tiny_model
from tvlens import _engine as engine


@pytest.fixture(scope="module", params=list(TINY_ARCHS))
def model(request, toy_tokenizer):
    return make_tiny_model(toy_tokenizer, seed=3, **TINY_ARCHS[request.param])


def _module_logits(model, resid):
    x = model.ln_final(resid[:, None]) if model.cfg.normalization_type is not None else resid[:, None]
    return model.unembed(x)[:, 0]


def test_final_logits_equal_the_unembed_module_exactly(model):
    resid = torch.randn(5, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(engine.final_logits(model, resid), _module_logits(model, resid))
        assert engine._unembed_weight(model) is engine._unembed_weight(model)  # made once, then kept


def test_final_logits_follow_an_in_place_change_of_w_u(model):
    resid = torch.randn(3, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    saved = model.unembed.W_U.detach().clone()
    try:
        with torch.no_grad():
            before = engine.final_logits(model, resid)
            model.unembed.W_U.mul_(2.0)  # bumps the version counter: the kept copy must be remade
            after = engine.final_logits(model, resid)
            assert torch.equal(after, _module_logits(model, resid))
            assert not torch.equal(after, before)
    finally:
        with torch.no_grad():
            model.unembed.W_U.copy_(saved)


def test_hooks_on_the_unembedding_still_fire(model):
    resid = torch.randn(2, model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    seen = []
    with torch.no_grad(), model.hooks(fwd_hooks=[("unembed.hook_out", lambda act, hook: seen.append(act.shape) or act * 0)]):
        out = engine.final_logits(model, resid)
    assert seen == [(2, 1, model.cfg.d_vocab)] and torch.equal(out, torch.zeros_like(out))


def test_gradients_reach_w_u_when_it_requires_them(model):
    resid = torch.randn(2, model.cfg.d_model, generator=torch.Generator().manual_seed(3), requires_grad=True)
    model.zero_grad(set_to_none=True)
    engine.final_logits(model, resid).sum().backward()
    # the unembedding's own parameter (a bridge's W_U is a transposed view of its Linear's weight)
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.unembed.parameters()) and resid.grad is not None
    model.zero_grad(set_to_none=True)
