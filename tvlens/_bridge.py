"""Load a model onto TransformerLens's ``TransformerBridge`` (``load_model(..., backend="bridge")``).

Context: the bridge wraps the Hugging Face model itself instead of converting its weights, so a
local HF directory (and a GGUF file, once :mod:`tvlens._gguf` has turned it into one) boots
directly with ``TransformerBridge.boot_transformers(folder, hf_model=..., tokenizer=...)``, offline.
The bridge's default forward is the raw HF computation; :func:`bridge_from_hf_dir` then calls
``enable_compatibility_mode`` (fold LN, centre the writing weights and the unembedding, fold the
value biases) so that logits, residual streams and hooks read as on the ``HookedTransformer`` that
``backend="hooked"`` builds from the same folder (tests/test_bridge.py checks it against that one).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from tvlens import _backend
from tvlens.errors import ModelLoadError

log = logging.getLogger(__name__)

# The weight-processing options of enable_compatibility_mode; the hooked loader's defaults.
PROCESSING = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": False,
}


def bridge_from_hf_dir(
    path: Path,
    hf_model: torch.nn.Module,
    arch: str,
    tokenizer,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    processing: dict,
    model_name: str,
):
    """Boot ``hf_model`` (loaded from ``path``) onto a TransformerBridge in compatibility mode.

    ``processing``: enable_compatibility_mode's options (:data:`PROCESSING` fills the missing ones);
    ``tokenizer``: the directory's tokenizer (the bridge needs one: it tokenizes prompts itself).
    """
    if not _backend.HAS_BRIDGE:
        raise ModelLoadError("backend='bridge' needs transformer_lens>=3.9 (TransformerBridge); "
                             "upgrade it or use backend='hooked'")
    if tokenizer is None:
        raise ModelLoadError(
            f"{path} has no tokenizer, and the TransformerBridge needs one; save it there with "
            "tokenizer.save_pretrained(dir), pass tokenizer=..., or use backend='hooked'"
        )
    unknown = sorted(set(processing) - set(PROCESSING))
    if unknown:
        raise TypeError(f"load_model(backend='bridge') got unexpected keyword arguments {unknown}")
    opts = {**PROCESSING, **processing}
    if not getattr(hf_model.config, "architectures", None):  # configs derived from GGUF metadata name none
        hf_model.config.architectures = [arch]
    stdout = io.StringIO()  # TransformerLens prints; library code logs
    try:
        with contextlib.redirect_stdout(stdout), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = _backend.TransformerBridge.boot_transformers(
                str(path), hf_model=hf_model, tokenizer=tokenizer, device=str(device), dtype=dtype
            )
            if getattr(bridge.cfg, "original_architecture", None) is None:  # 4.x leaves it unset; the hooked config
                bridge.cfg.original_architecture = arch  # names it (the post-norm check below and fingerprints read it)
            bridge.enable_compatibility_mode(disable_warnings=True, **_supported(bridge, opts))
    except (NotImplementedError, ValueError, KeyError, AttributeError, RuntimeError, OSError) as exc:
        raise ModelLoadError(
            f"{path}: TransformerLens' TransformerBridge cannot load architecture {arch} "
            f"({type(exc).__name__}: {exc}); try backend='hooked'"
        ) from exc
    if stdout.getvalue().strip():
        log.info("%s", stdout.getvalue().strip())
    bridge.cfg.model_name = model_name
    bridge.eval()
    log.info("loaded %s (%s) from %s onto the TransformerBridge", model_name, arch, path)
    return bridge


def _supported(bridge, opts: dict) -> dict:
    """Turn off the processing steps that would change this architecture's function, as the hooked loader does."""
    cfg = bridge.cfg
    out = dict(opts)
    try:
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
    except ImportError:  # older TransformerLens
        POST_NORM_ARCHITECTURES = set()
    if getattr(cfg, "original_architecture", None) in POST_NORM_ARCHITECTURES:
        out["fold_ln"] = out["center_writing_weights"] = False
    cap = getattr(cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        out["center_unembed"] = False
    return out


# --- TransformerLens-format checkpoints (the toy model) -------------------------------------------

_NATIVE_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "act_fn",
                  "normalization_type", "positional_embedding_type", "default_prepend_bos")


def bridge_from_tl_state_dict(state: dict, fields: dict, tokenizer, *, model_name: str, source: str):
    """A TransformerBridge over TransformerLens's own native model holding a HookedTransformer state dict.

    For GPT-2-shaped checkpoints (LayerNorm, learned positions, biases everywhere, separate
    unembedding with a bias), the shape ``tvlens toy-train`` writes. TransformerLens 3.9 has no
    converter from its own checkpoint format to the bridge, so the weights are mapped here into
    ``NativeModel`` (``q/k/v/o``, ``fc_in/fc_out`` linear layers; ``[head, d_model, d_head]`` to
    ``[head * d_head, d_model]``), whose forward is HookedTransformer's. No weight processing is
    applied (``enable_compatibility_mode(no_processing=True)``): the hooked backend loads these
    checkpoints unprocessed too, so residual streams are the same numbers on both.
    """
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformer_lens.model_bridge.sources.native import NativeModel

    if (fields.get("normalization_type"), fields.get("positional_embedding_type")) != ("LN", "standard"):
        raise ModelLoadError(f"{source}: only GPT-2-shaped TransformerLens checkpoints (LN, standard positions) load "
                             "onto the bridge; use backend='hooked'")
    cfg = TransformerBridgeConfig(**{k: fields[k] for k in _NATIVE_FIELDS if k in fields}, init_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = NativeModel(cfg)
        native.head = torch.nn.Linear(cfg.d_model, cfg.d_vocab, bias=True)  # HookedTransformer's unembedding has b_U
        try:
            native.load_state_dict(_native_state(state, cfg.n_layers, cfg.n_heads), strict=True)
        except (KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"{source}: the checkpoint does not fit a GPT-2-shaped model ({exc}); "
                                 "re-create it with `tvlens toy-train` or use backend='hooked'") from exc
        native.eval()
        bridge = build_bridge_from_module(native, "TransformerLensNative", tl_config=cfg, tokenizer=tokenizer,
                                          model_name=model_name)
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.eval()
    log.info("loaded %s from %s onto the TransformerBridge (native model)", model_name, source)
    return bridge


def _native_state(sd: dict, n_layers: int, n_heads: int) -> dict:
    """HookedTransformer parameter names and layouts -> NativeModel's (:func:`tvlens._backend.native_layout`)."""
    return {nat: to_native(sd[hooked]).contiguous() for hooked, nat, to_native, _ in _backend.native_layout(n_layers, n_heads)}
