"""Shared fixtures: tiny random models (mechanics oracles) and the embedded model (behaviour)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def toy_tokenizer(tmp_path_factory):
    from tvlens.toy._tokenizer import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("toy_tokenizer"))


def make_tiny_model(tokenizer, *, n_layers: int = 2, d_model: int = 32, n_heads: int = 2, seed: int = 0, **kw):
    """A randomly initialised HookedTransformer with the toy tokenizer (for oracle tests)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = {"act_fn": "gelu", "normalization_type": "LN", **kw}
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=4 * d_model,
        n_ctx=128,
        d_vocab=len(tokenizer.get_vocab()),
        seed=seed,
        **kw,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


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


@pytest.fixture(scope="session")
def tiny_model(toy_tokenizer):
    return make_tiny_model(toy_tokenizer)


@pytest.fixture(scope="session")
def toy_model():
    import tvlens as tv

    return tv.load_model("toy")


def assert_no_hooks_left(model) -> None:
    """Oracle: no TransformerLens hook and no torch hook on any module; nothing patched on the instance."""
    for name, hp in model.hook_dict.items():
        assert not hp.fwd_hooks and not hp.bwd_hooks, f"hook left at {name}"
    for name, module in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(module, kind), f"torch {kind} left on {name or 'the model'}"
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
