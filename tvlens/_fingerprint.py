"""Name a model by its architecture and a hash of its weights (``tv.fingerprint``).

Context: a saved task vector records the fingerprint of the model it was trained on, so that
applying it to another model is refused (``IncompatibleModelError``) unless the user overrides.

>>> import tvlens as tv
>>> tv.fingerprint(tv.load_model("toy"))
'gpt2-like:L5-d128-h4-v374:sha256:...'
"""

from __future__ import annotations

import hashlib
import json
import math
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from tvlens._memo import weights_key

if TYPE_CHECKING:  # annotations only: the backend lives in tvlens._backend
    from transformer_lens import HookedTransformer, HookedTransformerConfig

_EXACT_HASH_LIMIT = 1 << 22  # tensors up to this many elements are hashed in full
_SAMPLED_ELEMENTS = 1 << 20  # larger tensors: about this many elements, evenly strided
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(exact, config fields, weights key): fingerprint}
# model -> (parameters by name, config fields that override the model's) or None: how a backend names a model's
# weights the way HookedTransformer does, so that the same weights get the same fingerprint on either backend.
# tvlens._backend (a higher level) adds its view here when it is imported; the first that answers wins.
CANONICAL_VIEWS: list[Callable[[Any], tuple[dict[str, torch.Tensor], dict[str, Any]] | None]] = []


def _family(cfg: HookedTransformerConfig) -> str:
    arch = cfg.original_architecture
    if arch:
        for suffix in ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "Model"):
            arch = arch.removesuffix(suffix)
        return arch.lower() or "custom"
    if cfg.positional_embedding_type == "rotary" and cfg.gated_mlp:
        return "llama-like"
    if cfg.positional_embedding_type == "standard" and not cfg.gated_mlp:
        return "gpt2-like"
    return "custom"


# compute-relevant config fields that are not visible in the parameter shapes
_HASHED_CFG_FIELDS = (
    "act_fn", "normalization_type", "positional_embedding_type", "n_ctx", "eps", "attn_only",
    "gated_mlp", "final_rms", "use_attn_scale", "attn_scale", "rotary_dim", "rotary_base",
    "n_key_value_heads", "parallel_attn_mlp", "output_logits_soft_cap", "attn_scores_soft_cap",
)


def fingerprint(model: HookedTransformer, *, exact: bool = False) -> str:
    """A stable name for a model: architecture plus a hash of its weights.

    Format ``"<family>:L<n_layers>-d<d_model>-h<n_heads>-v<d_vocab>:sha256:<16 hex>"``, e.g.
    ``"gpt2-like:L4-d128-h4-v370:sha256:0f3a..."``. The family is the HF architecture
    (``gpt2``, ``llama``) or, for models built from a config, ``gpt2-like`` / ``llama-like`` /
    ``custom``. The hash covers every parameter, sorted by name, as (name, dtype, shape, raw
    bytes), plus the config fields that change the function without changing a shape
    (``act_fn``, ``eps``, ``rotary_base``, ...). It is the same across processes and devices
    and for a deep copy; any change of a weight, dtype or shape changes it.

    Large models: a tensor of more than 4M elements is hashed on an evenly strided subset of
    about 1M of its elements (the stride is part of the hash), so a change confined to the
    unread elements of such a tensor goes unnoticed. The toy model is hashed exactly; for
    GPT-2 small only the embeddings are sampled. ``exact=True`` hashes everything.

    Backends: a TransformerLens checkpoint (the toy) on the TransformerBridge is hashed under the
    HookedTransformer's parameter names, layouts and config values, so it has the hooked model's
    fingerprint and vectors move between the backends. A Hugging Face model's bridge hashes its own
    (processed) parameters: its fingerprint differs from the hooked model's.
    """
    cfg = model.cfg
    view = _view(model)
    overrides = view[1] if view is not None else {}
    fields = json.dumps({name: overrides.get(name, getattr(cfg, name, None)) for name in _HASHED_CFG_FIELDS},
                        sort_keys=True, default=str)
    arch = f"{_family(cfg)}:L{cfg.n_layers}-d{cfg.d_model}-h{cfg.n_heads}-v{cfg.d_vocab}"
    key = (exact, fields, arch, weights_key(model))  # the same weights and config: the kept name (hashing SmolLM2 takes ~0.5 s)
    kept = _KEPT.setdefault(model, {})
    if key not in kept:
        kept.clear()
        kept[key] = _hash(model, fields, arch, exact)
    return kept[key]


def _view(model):
    """The first answer of :data:`CANONICAL_VIEWS` for ``model``: (parameters by name, config overrides), or None."""
    return next((v for v in (f(model) for f in CANONICAL_VIEWS) if v is not None), None)


def _hash(model, fields: str, arch: str, exact: bool) -> str:
    view = _view(model)
    named = view[0].items() if view is not None else model.named_parameters()
    h = hashlib.sha256()
    h.update(fields.encode())
    with torch.no_grad():
        for name, param in sorted(named, key=lambda kv: kv[0]):
            flat = param.detach().reshape(-1)
            stride = 1
            if not exact and flat.numel() > _EXACT_HASH_LIMIT:
                stride = math.ceil(flat.numel() / _SAMPLED_ELEMENTS)
                flat = flat[::stride]
            header = f"{name}|{str(param.dtype)}|{tuple(param.shape)}|{stride}\n"
            h.update(header.encode())
            h.update(flat.contiguous().cpu().view(torch.uint8).numpy())  # raw bytes, any dtype
    return f"{arch}:sha256:{h.hexdigest()[:16]}"


def model_summary(model: HookedTransformer) -> dict[str, Any]:
    """The shape and identity of a model as a JSON-ready dict (fingerprint included)."""
    cfg = model.cfg
    param = next(model.parameters(), None)
    return {
        "model_name": cfg.model_name,
        "original_architecture": cfg.original_architecture,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp,
        "d_vocab": cfg.d_vocab,
        "n_ctx": cfg.n_ctx,
        "act_fn": cfg.act_fn,
        "normalization_type": cfg.normalization_type,
        "positional_embedding_type": cfg.positional_embedding_type,
        "n_params": sum(p.numel() for p in model.parameters()),
        "dtype": str(param.dtype).removeprefix("torch.") if param is not None else None,
        "device": str(param.device) if param is not None else None,
        "has_tokenizer": model.tokenizer is not None,
        "fingerprint": fingerprint(model),
    }
