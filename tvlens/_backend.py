"""The one place that knows which TransformerLens backend a model (or the installation) has.

Context: TransformerLens 3.x offers ``HookedTransformer`` (tvlens's reference backend) and, from
3.9, the ``TransformerBridge``; 4.x removed ``HookedTransformer``, ``loading_from_pretrained`` and
``components``. Every other tvlens module asks this one instead of testing the backend itself.

What differs on a bridge (``load_model(..., backend="bridge")``, :mod:`tvlens._bridge`) and is
hidden here: ``stop_at_layer`` stops elsewhere (:func:`stopping_before`, used by ``_engine.final_residual``); its blocks do not
receive the ``[batch, pos]`` attention mask (:func:`track_call_masks`, :func:`block_attention_mask`);
GQA's ``W_K`` / ``W_V`` stay grouped (:func:`per_query_head`); bias-free models have no stacked
biases (:func:`stacked_bias`); ``past_kv_cache`` is ignored (:func:`kv_cache_unsupported_reason`).
The hook names tvlens uses exist on both (the bridge has more).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import weakref

from collections.abc import Callable
from typing import Union

import torch

from tvlens import _fingerprint, _memo

log = logging.getLogger(__name__)

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


def describe(model) -> dict:
    """What a vector made on ``model`` records of its backend (``TaskVector.meta["backend"]``): the model class, the
    TransformerLens version, and on a bridge whether its compatibility mode (folded, centred weights) was on."""
    from importlib.metadata import version

    out = {"class": type(model).__name__, "transformer_lens": version("transformer_lens")}
    if is_bridge(model):
        out["compatibility_mode"] = bool(getattr(model, "compatibility_mode", False))
    return out


def lean_blocks_unsupported_reason(model) -> str | None:
    """Why the engine's lean blocks (``tvlens._engine_lean``, built from HookedTransformer's components) cannot
    stand in for this model's blocks (None when they can)."""
    if not is_hooked(model):
        return "the lean blocks are built from HookedTransformer's components (a TransformerBridge runs its own)"
    return None


def default_backend() -> str:
    """What ``backend="auto"`` means here: ``"hooked"`` where HookedTransformer exists, else ``"bridge"``."""
    return "hooked" if HAS_HOOKED else "bridge"


def kv_cache_unsupported_reason(model: object) -> str | None:
    """Why this model cannot take TransformerLens's own KV cache (``past_kv_cache=``; None when it can).

    The bridge accepts ``past_kv_cache=`` and silently ignores it (suffix logits were wrong by
    0.064, FINDINGS): on a bridge the engine's prefix uses Hugging Face's cache instead
    (:func:`suffix_cache_unsupported_reason`), and the engine's ``generate`` takes full forwards.
    """
    if is_bridge(model):
        return "the TransformerBridge ignores past_kv_cache"
    return None


# --- the bridge's prefix cache: Hugging Face's DynamicCache ----------------------------------------
#
# A bridge over a Hugging Face model computes attention in TransformerLens's attention bridges, which extend the keys
# and values with a ``past_key_values`` cache when they are given one (``_update_kv_cache``). transformers 5 hands a
# decoder layer's cache to its attention as ``cache=``, a name TransformerLens 4.3's bridges do not read, so without
# :func:`hf_cache_calls` the cache is silently ignored. A bridge over TransformerLens's native model (the toy, tiny
# test models) keeps no cache at all. The engine therefore checks every use: the prefix call must fill the cache to
# the prefix's length and every suffix run must extend it to the full length (:func:`hf_cache_length`); a model
# that fails either is recorded here and takes full forwards from then on.

_HF_CACHE_BROKEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # bridge -> why its HF cache cannot serve


def suffix_cache_unsupported_reason(model: object) -> str | None:
    """Why the engine's suffix runs cannot attend to a cached prefix on this model (None: they can).

    A HookedTransformer uses TransformerLens's KV cache; a bridge uses Hugging Face's ``DynamicCache``
    until a use of it failed the engine's checks on this model (:func:`mark_hf_cache_broken`).
    """
    if is_bridge(model):
        if is_native_bridge(model):
            return "a bridge over TransformerLens's native model (boot_native) keeps no KV cache"
        return _HF_CACHE_BROKEN.get(model)
    return None


def is_native_bridge(model) -> bool:
    """Whether ``model`` is a bridge over TransformerLens's own ``NativeModel`` (``boot_native``: the toy on 4.x,
    tiny test models), which takes no cache of any kind."""
    return type(getattr(model, "original_model", None)).__name__ == "NativeModel"


def mark_hf_cache_broken(model, reason: str) -> None:
    """Record that ``model``'s Hugging Face cache cannot serve suffix runs (they take full forwards from now on), and log it."""
    _HF_CACHE_BROKEN[model] = f"the bridge's Hugging Face KV cache cannot serve suffix runs: {reason}"
    log.warning("%s; this run and later ones on this model take full forwards", _HF_CACHE_BROKEN[model])


def new_hf_cache(keys=None, values=None, rows=None):
    """A fresh ``DynamicCache``: empty, or holding per-layer ``keys``/``values`` ``[batch, kv_head, pos, d_head]`` at ``rows``.

    A suffix run extends the cache it is given in place, so every run gets its own (the stored tensors are not
    changed: the cache concatenates onto new ones).
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(keys or (), values or ())):
        cache.update(k if rows is None else k[rows], v if rows is None else v[rows], layer)
    return cache


def hf_cache_tensors(cache, n_layers: int) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """The per-layer keys and values a ``DynamicCache`` holds (None when any layer holds none)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        ks, vs = [getattr(x, "keys", None) for x in layers], [getattr(x, "values", None) for x in layers]
    else:  # transformers before 4.56: parallel lists
        ks, vs = list(getattr(cache, "key_cache", [])), list(getattr(cache, "value_cache", []))
    if len(ks) != n_layers or any(k is None or not torch.is_tensor(k) for k in ks + vs):
        return None
    return ks, vs


def hf_cache_length(cache) -> int:
    """Columns a ``DynamicCache`` holds (its first layer's)."""
    return int(cache.get_seq_length())


@contextlib.contextmanager
def hf_cache_calls(model):
    """Context: a bridge's attention layers receive the Hugging Face cache as ``past_key_values`` (see above)."""

    def rename(module, args, kwargs):
        cache = kwargs.get("cache")
        if cache is not None and kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = cache
            return args, kwargs
        return None

    handles = [block.attn.register_forward_pre_hook(rename, with_kwargs=True) for block in model.blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def block_call_offset(layer: int, block_args: tuple, block_kwargs: dict) -> int:
    """Columns before a block call's first column: the length of the KV cache it attends to (0 without one).

    TransformerLens's blocks get ``past_kv_cache_entry``; a bridge's Hugging Face layers get the whole cache
    (Llama: ``cache=`` in transformers 5; GPT-2: positionally), whose layer ``layer`` has not yet been extended
    when the block starts.
    """
    entry = block_kwargs.get("past_kv_cache_entry")
    if entry is not None:
        return int(entry.past_keys.shape[1])
    for cache in (*block_kwargs.values(), *block_args[1:]):
        if hasattr(cache, "get_seq_length") and not torch.is_tensor(cache):
            return int(cache.get_seq_length(layer))
    return 0


@contextlib.contextmanager
def stopping_before(model, layer: int):
    """Make the bridge's forward stop at the input of block ``layer`` (``ln_final`` for ``n_layers``) and return it.

    On a HookedTransformer ``stop_at_layer=layer`` does this. On the bridge that keyword never stops at
    ``n_layers`` (the call returns logits) and below it returns the block's input *after* its
    ``hook_resid_pre`` hooks ran (an edit there would be counted twice by a run resumed at that block), so a
    forward pre-hook raises the bridge's own StopAtLayerException before the block (or ``ln_final``) starts,
    which its forward catches and returns. Only the engine calls the model inside this (``_engine.final_residual``).
    """
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    def stop(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        raise StopAtLayerException(x)

    module = model.ln_final if layer == model.cfg.n_layers else model.blocks[layer]
    handle = module.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def track_call_masks(model, record) -> list:
    """Hook handles that pass ``record`` the ``[batch, pos]`` attention mask of each forward call and its
    :func:`bridge_generate_step` (none
    needed on a HookedTransformer, whose blocks receive that mask itself; remove them when done).

    A bridge's blocks see whatever the HF model makes of the mask (a 4-d additive mask for Llama,
    nothing at all for GPT-2), so the mask is read where the bridge's forward receives it.
    """
    if not is_bridge(model):
        return []
    return [model.register_forward_pre_hook(
        lambda module, args, kwargs: record(kwargs.get("attention_mask"), bridge_generate_step(model)), with_kwargs=True)]


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


def grouped_weight(model, layer: int, name: str):
    """``blocks[layer].attn``'s ``W_K`` / ``W_V`` with one entry per *key/value* head, ``[n_key_value_heads, d_model, d_head]``
    (``[n_heads, ...]`` without grouped-query attention), on either backend: the weights as the model stores them,
    before :func:`per_query_head` repeats them. HookedTransformer keeps them as ``attn._W_K`` / ``attn._W_V`` under GQA
    (its ``W_K`` / ``W_V`` are expanded); the bridge's ``W_K`` / ``W_V`` are the grouped ones.
    """
    attn = model.blocks[layer].attn
    if is_hooked(model) and hasattr(attn, f"_{name}"):
        return getattr(attn, f"_{name}")
    return getattr(attn, name)


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


def model_alias_map() -> dict[str, str]:
    """TransformerLens's model names: every lower-cased alias and official name -> the official name.

    3.x keeps them in ``loading_from_pretrained.make_model_alias_map``; 4.x removed that module and
    keeps the same map, for its HookedTransformer-era names, in ``supported_models``.
    """
    try:
        from transformer_lens.loading_from_pretrained import make_model_alias_map
    except ImportError:  # TransformerLens 4.x
        from transformer_lens.supported_models import _model_alias_map as make_model_alias_map
    return make_model_alias_map()


def check_convertible(config_dir: str, arch: str) -> None:
    """Raise NotImplementedError if the backend ``backend="auto"`` picks cannot load architecture ``arch``.

    ``config_dir`` holds a ``config.json`` naming ``arch``. HookedTransformer converts the config
    (``get_pretrained_model_config``, which fails in seconds on an unknown architecture); the bridge
    (4.x) needs an architecture adapter for it.
    """
    if HAS_HOOKED:
        import transformer_lens.loading_from_pretrained as loading

        loading.get_pretrained_model_config(config_dir, local_files_only=True)
        return
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    if arch not in SUPPORTED_ARCHITECTURES:
        raise NotImplementedError(f"{arch} is not one of the TransformerBridge's supported architectures")


def user_torch_hooks(model: torch.nn.Module, kinds: tuple[str, ...] = _memo.HOOK_KINDS) -> list[tuple[str, str]]:
    """``(module name, hook kind)`` of every torch hook on ``model`` that the backend did not put there.

    The bridge (4.x) wires its own forward pre-hooks onto each block's ``ln1`` / ``ln2`` on the first
    forward (kept for the model's life); they compute nothing, so "no hook installed" means the same
    on both backends. The rule itself lives at the ground level, in :func:`tvlens._memo.user_torch_hooks`,
    which ``memo_key`` needs.
    """
    return _memo.user_torch_hooks(model, kinds)



def bridge_generate_step(model) -> int | None:
    """The step of the bridge's ``generate`` loop that the current forward call belongs to (0 = the
    prompt), or None outside ``generate`` and on a HookedTransformer.

    A HookedTransformer's generate embeds each new token itself, which :class:`tvlens._hooks._Tracker`
    recognises; a bridge's calls its ordinary forward, so this looks for its token loop
    (``TransformerBridge._generate_tokens``, its ``gen_step_idx``) among the callers, patching nothing.
    """
    if not is_bridge(model):
        return None
    code = getattr(getattr(type(model), "_generate_tokens", None), "__code__", None)
    if code is None:
        return None
    frame = sys._getframe(1)
    for _ in range(_GENERATE_FRAME_DEPTH):
        if frame is None:
            return None
        if frame.f_code is code:
            step = frame.f_locals.get("gen_step_idx")
            return int(step) if isinstance(step, int) else 0
        frame = frame.f_back
    return None


_GENERATE_FRAME_DEPTH = 24  # the forward pre-hook sits about 8 frames below the generate loop


def native_layout(n_layers: int, n_heads: int) -> list[tuple[str, str, Callable, Callable]]:
    """``(HookedTransformer name, NativeModel name, to_native, to_hooked)`` of every parameter of the GPT-2-shaped
    ``NativeModel`` that holds a TransformerLens checkpoint on the bridge: the one table both directions read
    (``tvlens._bridge._native_state`` loads a checkpoint with ``to_native``; :func:`hooked_parameters` reads it
    back with ``to_hooked``). nn.Linear weights are ``[out, in]``."""
    same = (lambda w: w, lambda w: w)
    transposed = (lambda w: w.T, lambda w: w.T)
    heads = (lambda w: w.permute(0, 2, 1).reshape(-1, w.shape[1]),  # [head, d_model, d_head] <-> [head * d_head, d_model]
             lambda w: w.reshape(n_heads, -1, w.shape[1]).permute(0, 2, 1))
    head_bias = (lambda b: b.reshape(-1), lambda b: b.reshape(n_heads, -1))  # [head, d_head] <-> [head * d_head]
    w_o = (lambda w: w.reshape(-1, w.shape[-1]).T,  # [head, d_head, d_model] <-> [d_model, head * d_head]
           lambda w: w.T.reshape(n_heads, -1, w.shape[0]))
    rows = [("embed.W_E", "tok_embed.weight", *same), ("pos_embed.W_pos", "pos.weight", *same),
            ("ln_final.w", "ln_out.weight", *same), ("ln_final.b", "ln_out.bias", *same),
            ("unembed.W_U", "head.weight", *transposed), ("unembed.b_U", "head.bias", *same)]
    for i in range(n_layers):
        p, q = f"blocks.{i}.", f"layers.{i}."
        for ln in ("ln1", "ln2"):
            rows += [(f"{p}{ln}.w", f"{q}{ln}.weight", *same), (f"{p}{ln}.b", f"{q}{ln}.bias", *same)]
        for x in "QKV":
            rows += [(f"{p}attn.W_{x}", f"{q}attn.{x.lower()}.weight", *heads),
                     (f"{p}attn.b_{x}", f"{q}attn.{x.lower()}.bias", *head_bias)]
        rows += [(f"{p}attn.W_O", f"{q}attn.o.weight", *w_o), (f"{p}attn.b_O", f"{q}attn.o.bias", *same)]
        for w, fc in (("in", "fc_in"), ("out", "fc_out")):
            rows += [(f"{p}mlp.W_{w}", f"{q}mlp.{fc}.weight", *transposed), (f"{p}mlp.b_{w}", f"{q}mlp.{fc}.bias", *same)]
    return rows


def hooked_parameters(model) -> dict[str, torch.Tensor] | None:
    """The parameters of a bridge over a GPT-2-shaped ``NativeModel`` (what ``tvlens._bridge.bridge_from_tl_state_dict``
    builds from a TransformerLens checkpoint such as the toy) under HookedTransformer's names and layouts
    (:func:`native_layout`); None on a HookedTransformer and on any other bridge (a Hugging Face model, another
    native layout).

    Each tensor is a rearranged view of the live weight: its values are those of a HookedTransformer holding
    the same checkpoint, bit for bit.
    """
    if not is_bridge(model):
        return None
    from transformer_lens.model_bridge.sources.native import NativeModel

    native = getattr(model, "original_model", None)
    if not isinstance(native, NativeModel):
        return None
    # the bridge wraps each of the native model's modules in place: "layers.0._original_component.ln1. ..."
    own = {name.replace("_original_component.", ""): w for name, w in native.named_parameters()}
    layout = native_layout(native.cfg.n_layers, native.cfg.n_heads)
    if set(own) != {nat for _, nat, _, _ in layout}:
        return None
    return {hooked: to_hooked(own[nat]) for hooked, nat, _, to_hooked in layout}


def _fingerprint_view(model) -> tuple[dict[str, torch.Tensor], dict] | None:
    """What ``tv.fingerprint`` hashes where the bridge holds a TransformerLens checkpoint: its weights under
    HookedTransformer's names (:func:`hooked_parameters`) and its config fields as HookedTransformer states
    them (NativeModel's ``attn_scale=-1`` means sqrt(d_head), the number HookedTransformer stores), so the
    same checkpoint has the same fingerprint on both backends. None elsewhere: the model's own parameters."""
    params = hooked_parameters(model)
    if params is None:
        return None
    cfg, fields = model.cfg, {}
    if cfg.use_attn_scale and not cfg.attn_scale > 0:
        fields["attn_scale"] = math.sqrt(cfg.d_head)
    return params, fields


_fingerprint.CANONICAL_VIEWS.append(_fingerprint_view)
