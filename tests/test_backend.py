"""The backend adapter: tvlens imports on the installed TransformerLens, and a backend that
ignores the KV cache can never make a suffix run wrong (the engine falls back to full forwards)."""

from __future__ import annotations

import pytest
import torch

import tvlens
from tvlens import _backend, _engine


def test_auto_backend_matches_installation():
    assert _backend.default_backend() == ("hooked" if _backend.HAS_HOOKED else "bridge")
    assert tvlens.__name__ == "tvlens"


@pytest.mark.skipif(not _backend.HAS_HOOKED, reason="HookedTransformer absent (TransformerLens 4.x)")
def test_hooked_model_keeps_kv_cache():
    model = tvlens.load_model("toy")
    assert _backend.is_hooked(model) and not _backend.is_bridge(model)
    assert _backend.kv_cache_unsupported_reason(model) is None
    assert _engine.cache_unsupported_reason(model) is None


@pytest.mark.skipif(not _backend.HAS_BRIDGE, reason="no TransformerBridge in this TransformerLens")
def test_bridge_refuses_kv_cache_and_suffix_runs_fall_back(monkeypatch):
    """TransformerLens's own cache keyword is silently ignored by the bridge (the hazard), so tvlens never hands it one;
    a bridge over the native model keeps no Hugging Face cache either: its prefix falls back to full forwards, saying so."""
    from transformer_lens.config import TransformerBridgeConfig

    cfg = TransformerBridgeConfig(d_model=32, d_head=8, n_heads=4, n_layers=2, n_ctx=16, d_vocab=50,
                                  act_fn="gelu", normalization_type="LN", seed=0)
    bridge = _backend.TransformerBridge.boot_native(cfg)
    assert _backend.is_bridge(bridge)
    reason = _backend.kv_cache_unsupported_reason(bridge)
    assert reason is not None and "past_kv_cache" in reason
    # the hazard the fallback guards against: the keyword is accepted and changes nothing
    tokens = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = bridge(tokens)
        assert torch.allclose(full, bridge(tokens, past_kv_cache=object()), atol=1e-6)
    assert "native model" in _engine.cache_unsupported_reason(bridge)  # known without trying
    from tvlens.prompts import PromptBatch

    batch = PromptBatch(tokens, torch.ones_like(tokens), torch.tensor([7]), torch.tensor([0]), ((0,),), "left")
    with torch.no_grad():
        pre = _engine.prefix(bridge, batch, positions=(-1,))
        assert pre.fallback is not None and "keeps no KV cache" in pre.fallback and pre.c0 == 0
        assert (pre.final() - _engine.final_residual(bridge, tokens)[:, -1]).abs().max() < 1e-6
    # were it not known, the first prefix would find out: an empty cache after the prefix call is recorded
    monkeypatch.setattr(_backend, "is_native_bridge", lambda model: False)
    _backend._HF_CACHE_BROKEN.pop(bridge, None)
    assert _engine.cache_unsupported_reason(bridge) is None
    with torch.no_grad():
        pre = _engine.prefix(bridge, batch, positions=(-1,))
    assert pre.fallback is not None and "no cache" in pre.fallback and _engine.cache_unsupported_reason(bridge) == pre.fallback


def test_load_model_backend_choices_are_typed_errors():
    from tvlens.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="backend must be one of"):
        tvlens.load_model("toy", backend="jax")
    if _backend.HAS_BRIDGE:  # loading onto the bridge: tests/test_bridge.py
        assert _backend.is_bridge(tvlens.load_model("toy", backend="bridge"))
    else:
        with pytest.raises(ModelLoadError, match="transformer_lens>=3.9"):
            tvlens.load_model("toy", backend="bridge")
    if not _backend.HAS_HOOKED:  # on 4.x: auto means the bridge; hooked names the fix
        with pytest.raises(ModelLoadError, match="transformer_lens<4"):
            tvlens.load_model("toy", backend="hooked")
        assert _backend.is_bridge(tvlens.load_model("toy"))
    else:
        assert _backend.is_hooked(tvlens.load_model("toy", backend="hooked"))
        assert _backend.is_hooked(tvlens.load_model("toy"))
