"""The one place that knows which TransformerLens backend a model (or the installation) has.

Context: TransformerLens 3.x offers ``HookedTransformer`` (tvlens's reference backend) and, from
3.9, the ``TransformerBridge``; 4.x removed ``HookedTransformer``, ``loading_from_pretrained`` and
``components``. Every other tvlens module asks this one instead of testing the backend itself.
"""

from __future__ import annotations

try:  # TransformerLens 3.x: the reference backend
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:  # TransformerLens 4.x removed it
    HookedTransformer = None  # type: ignore[assignment,misc]
    HookedTransformerConfig = None  # type: ignore[assignment,misc]

try:
    from transformer_lens.model_bridge import TransformerBridge
except ImportError:  # TransformerLens before 3.9
    TransformerBridge = None  # type: ignore[assignment,misc]

HAS_HOOKED = HookedTransformer is not None
HAS_BRIDGE = TransformerBridge is not None
BACKENDS = ("auto", "hooked", "bridge")


def is_bridge(model: object) -> bool:
    """Whether ``model`` is a TransformerBridge (4.x style) rather than a HookedTransformer."""
    return HAS_BRIDGE and isinstance(model, TransformerBridge)


def is_hooked(model: object) -> bool:
    """Whether ``model`` is a HookedTransformer."""
    return HAS_HOOKED and isinstance(model, HookedTransformer)


def default_backend() -> str:
    """What ``backend="auto"`` means here: ``"hooked"`` where HookedTransformer exists, else ``"bridge"``."""
    return "hooked" if HAS_HOOKED else "bridge"


def kv_cache_unsupported_reason(model: object) -> str | None:
    """Why this backend cannot serve prefix-cached suffix runs (None when it can).

    The bridge accepts ``past_kv_cache=`` and silently ignores it (suffix logits were wrong by
    0.064, FINDINGS), so suffix runs on it must be full forwards until the engine drives its HF cache.
    """
    if is_bridge(model):
        return "the TransformerBridge ignores past_kv_cache (no prefix cache on this backend yet)"
    return None
