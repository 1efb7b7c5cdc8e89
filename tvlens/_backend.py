"""The one place that knows which TransformerLens backend a model (or the installation) has.

Context: TransformerLens 3.x offers ``HookedTransformer`` (tvlens's reference backend) and, from
3.9, the ``TransformerBridge``; 4.x removed ``HookedTransformer``, ``loading_from_pretrained`` and
``components``. Every other tvlens module asks this one instead of testing the backend itself.

What differs on a bridge (``load_model(..., backend="bridge")``, :mod:`tvlens._bridge`) and is
hidden here: ``stop_at_layer=n_layers`` does not stop (:func:`stopping_before_final_norm`, used by ``_engine.final_residual``); its blocks do not
receive the ``[batch, pos]`` attention mask (:func:`track_call_masks`, :func:`block_attention_mask`);
GQA's ``W_K`` / ``W_V`` stay grouped (:func:`per_query_head`); bias-free models have no stacked
biases (:func:`stacked_bias`); ``past_kv_cache`` is ignored (:func:`kv_cache_unsupported_reason`).
The hook names tvlens uses exist on both (the bridge has more).
"""

from __future__ import annotations

import contextlib

from typing import Union

import torch

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
# What load_model returns: the model classes this installation has (for annotations, checked at run time in tests).
if HAS_HOOKED and HAS_BRIDGE:
    Model = Union[HookedTransformer, TransformerBridge]
elif HAS_BRIDGE:
    Model = TransformerBridge
else:
    Model = HookedTransformer
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


@contextlib.contextmanager
def stopping_before_final_norm(model):
    """Make the bridge's forward stop at the input of ``ln_final`` and return it (the final residual).

    On a HookedTransformer ``stop_at_layer=n_layers`` does this; on the bridge that keyword never stops
    (its blocks stop only at their own index) and the call returns logits, so a pre-hook on ``ln_final``
    raises the bridge's own StopAtLayerException, which its forward catches and returns. Only the engine
    calls the model inside this (``_engine.final_residual``).
    """
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    def stop(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        raise StopAtLayerException(x)

    handle = model.ln_final.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def track_call_masks(model, record) -> list:
    """Hook handles that pass ``record`` the ``[batch, pos]`` attention mask of each forward call (none
    needed on a HookedTransformer, whose blocks receive that mask itself; remove them when done).

    A bridge's blocks see whatever the HF model makes of the mask (a 4-d additive mask for Llama,
    nothing at all for GPT-2), so the mask is read where the bridge's forward receives it.
    """
    if not is_bridge(model):
        return []
    return [model.register_forward_pre_hook(lambda module, args, kwargs: record(kwargs.get("attention_mask")),
                                            with_kwargs=True)]


def block_attention_mask(model, block_kwargs: dict, call_mask):
    """The ``[batch, pos]`` attention mask of a block call: its own keyword on a HookedTransformer, the
    forward call's (:func:`track_call_masks`) on a bridge."""
    if is_bridge(model):
        return call_mask
    return block_kwargs.get("attention_mask")


def per_query_head(model, name: str):
    """``model.W_Q/W_K/W_V/W_O`` stacked ``[layer, head, ...]`` with one entry per *query* head on either backend.

    Under grouped-query attention HookedTransformer expands ``W_K`` / ``W_V`` to every query head;
    the bridge keeps them grouped, ``[layer, n_key_value_heads, ...]``: each group is repeated here
    the way both backends pair query heads with key/value heads (consecutive query heads share one).
    """
    w = getattr(model, name)
    n_heads = model.cfg.n_heads
    if w.shape[1] != n_heads:
        if n_heads % w.shape[1]:
            raise ValueError(f"{name} has {w.shape[1]} heads, which do not divide the {n_heads} query heads")
        w = w.repeat_interleave(n_heads // w.shape[1], dim=1)
    return w


_BIAS_SHAPES = {"b_Q": "q", "b_K": "q", "b_V": "q", "b_O": "model", "b_in": "mlp", "b_out": "model"}


def stacked_bias(model, name: str):
    """``model.b_Q/b_K/b_V/b_O/b_in/b_out`` on either backend: zeros where the model has no such bias.

    HookedTransformer keeps zero biases for bias-free architectures (Llama); the bridge's stacked
    property fails on them (TypeError on 3.9, AttributeError on 4.x). GQA's b_K / b_V come per query head.
    """
    try:
        b = getattr(model, name)
    except (TypeError, AttributeError):
        b = None
    cfg = model.cfg
    if b is None:
        shape = {"q": (cfg.n_layers, cfg.n_heads, cfg.d_head), "model": (cfg.n_layers, cfg.d_model),
                 "mlp": (cfg.n_layers, cfg.d_mlp)}[_BIAS_SHAPES[name]]
        param = next(model.parameters())
        return torch.zeros(shape, dtype=param.dtype, device=param.device)
    if name in ("b_K", "b_V") and b.shape[1] != cfg.n_heads:
        b = b.repeat_interleave(cfg.n_heads // b.shape[1], dim=1)
    return b
