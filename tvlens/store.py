"""Vectors trained once: a content-addressed store of learned task vectors.

Context:
    The report, the sweep, compare and the lens, linear and geometry analyses each train LTVs
    for the same (model, task, site, config, split). Training is deterministic on one device
    (same inputs -> bit-identical vector), so a vector is named by everything it depends on and
    kept on disk: the next call with the same inputs, in this process or another command, loads
    it instead of training.

Intuition:
    The key is a sha256 of: the model's fingerprint (weights and config, :func:`tvlens.fingerprint`),
    its tokenizer, the device type, the task's content (name, format, every example), the split
    (its seed and its demo/train/val queries), the sites, the :class:`~tvlens.LTVConfig`, the shots,
    ``out_of_range`` and :func:`code_version` (a hash of the training code's source plus the torch
    and TransformerLens versions), so any change to one of them is a miss.

    An entry is one safetensors file ``<root>/<kk>/<key>.safetensors`` in the format of
    :meth:`TaskVector.save` (``TaskVector.load`` reads it) plus a ``tvlens_store`` header with the
    key, the key's fields, the training history and a sha256 of the values. It is written through
    :func:`tvlens._io.atomic_write`, so two processes storing one key leave one complete entry.
    Every load is verified (key, fields, checksum, a readable vector); an entry that fails is
    logged, ignored and overwritten by the retrained vector: it is never trusted.

Where: ``$TVLENS_CACHE_DIR/vectors`` (default ``~/.cache/tvlens/vectors``, see
:func:`tvlens._io.cache_dir`). ``TVLENS_NO_CACHE=1`` (what the CLI's ``--no-cache`` sets) turns
the default store off; ``train_ltv(..., cache=False)`` bypasses it for one call.

>>> import tempfile, tvlens as tv
>>> from tvlens.store import VectorStore
>>> store = VectorStore(tempfile.mkdtemp())
>>> model = tv.load_model("toy")
>>> a = tv.train_ltv(model, "toy/antonym", layers=[1], progress=False, cache=store)
>>> b = tv.train_ltv(model, "toy/antonym", layers=[1], progress=False, cache=store)
>>> b.from_store, bool((a.vector.values == b.vector.values).all())
(True, True)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tvlens._memo import tensor_digest
from tvlens.errors import ConfigError

log = logging.getLogger(__name__)

NO_CACHE_ENV = "TVLENS_NO_CACHE"  # "1": the default store is off (the CLI's --no-cache; inherited by worker processes)
STORE_FORMAT = "tvlens-vector-store/1"
LAST_TOKEN_ONLY = "any: every site at the last token"  # the key's out_of_range where it cannot act

# the modules whose source decides what training computes (a change to any of them is a new code version)
_TRAINING_MODULES = ("ltv/_train.py", "ltv/_objective.py", "ltv/_scale.py", "ltv/_config.py", "_engine.py",
                     "_engine_lean.py", "prompts.py", "sites.py", "_hooks.py", "vector.py")


# the same for the function vector's head AIE (clean means, corrupted prompts, batched patching)
_AIE_MODULES = ("baselines/function_vector.py", "evaluate.py", "_engine.py", "_engine_lean.py", "prompts.py", "_hooks.py",
                "interventions.py")


# the same for a linear-propagation fit (noisy copies through the engine's suffix runs, ridge fit, lens accuracies)
_LINEAR_MODULES = ("analysis/linear.py", "analysis/lens.py", "_engine.py", "_engine_lean.py", "prompts.py", "_hooks.py",
                   "sites.py", "vector.py")


@functools.lru_cache(maxsize=4)
def _source_version(modules: tuple[str, ...]) -> str:
    from importlib.metadata import version

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for rel in modules:
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    h.update(f"torch={torch.__version__};transformer_lens={version('transformer_lens')}".encode())
    return h.hexdigest()[:16]


def code_version() -> str:
    """A short hash of the training code's source, torch's and TransformerLens's versions."""
    return _source_version(_TRAINING_MODULES)


def aie_code_version() -> str:
    """The same for the code that computes a function vector's head AIE."""
    return _source_version(_AIE_MODULES)


def linear_code_version() -> str:
    """The same for the code that fits a linear propagation (:func:`tvlens.analysis.linear_propagation`)."""
    return _source_version(_LINEAR_MODULES)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=True, default=str).encode()).hexdigest()


def _examples(xs) -> list:
    return [[list(map(list, e.fields)), e.output] for e in xs]


def task_hash(task) -> str:
    """sha256 of a task's content: every field of the :class:`~tvlens.tasks.Task`, examples included."""
    d = asdict(task)
    d["examples"] = _examples(task.examples)
    return _sha(d)


def splits_hash(splits) -> str:
    """sha256 of a split: its task, seed and the demo / train / val queries training reads."""
    return _sha({"task": task_hash(splits.task), "seed": splits.seed,
                 **{k: _examples(getattr(splits, k)) for k in ("demo", "train", "val")}})


def tokenizer_hash(model) -> str:
    """sha256 of the model's tokenizer (vocabulary, special ids); "none" without one."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return "none"
    vocab = sorted(tok.get_vocab().items())
    return _sha({"class": type(tok).__name__, "vocab": vocab, "bos": tok.bos_token_id, "eos": tok.eos_token_id,
                 "pad": tok.pad_token_id, "add_bos": getattr(model.cfg, "default_prepend_bos", None)})


def _device_type(model) -> str:
    p = next(model.parameters(), None)
    return p.device.type if p is not None else "cpu"


def _subject_fields(model, task, splits, fingerprint: str) -> dict:
    """The fields every entry's key shares: the model (weights, tokenizer, device), the task's content, the split."""
    return {
        "model_fingerprint": fingerprint,
        "tokenizer": tokenizer_hash(model),
        "device": _device_type(model),
        "task": task.name,
        "task_hash": task_hash(task),
        "splits_hash": splits_hash(splits),
        "split_seed": splits.seed,
    }


def ltv_key_fields(model, task, *, sites, splits, config, shots: int, out_of_range: str, fingerprint: str) -> dict:
    """Everything a trained LTV depends on, as a JSON-able dict (the store key is its sha256)."""
    return {
        "kind": "ltv",
        **_subject_fields(model, task, splits, fingerprint),
        "sites": [[s.layer, s.position] for s in sites],
        "config": config.to_dict(),
        "shots": shots,
        # every prompt has a last token: with every site there, out_of_range never acts and the same vector is trained
        # (train_ltv relabels a hit with the caller's choice), so compare's "clip" and a sweep's "error" share one entry
        "out_of_range": out_of_range if any(s.position != -1 for s in sites) else LAST_TOKEN_ONLY,
        "code_version": code_version(),
    }


def aie_key_fields(model, task, *, splits, shots: int, n_clean: int, n_corrupt: int, seed: int,
                   heads_per_pass: int | None, batch_size: int, fingerprint: str) -> dict:
    """Everything a head AIE (:func:`tvlens.head_aie`) depends on; it does not depend on any injection layer."""
    return {
        "kind": "aie",
        **_subject_fields(model, task, splits, fingerprint),
        "shots": shots,
        "n_clean": n_clean,
        "n_corrupt": n_corrupt,
        "seed": seed,
        "heads_per_pass": heads_per_pass,
        "batch_size": batch_size,
        "code_version": aie_code_version(),
    }


def linear_key_fields(model, task, vector, *, splits, options: dict, fingerprint: str) -> dict:
    """Everything a linear-propagation fit of ``vector`` on ``task``'s own prompts depends on (``options``: the fit's
    copies, noise, ridge, query counts, seed and rows per pass)."""
    return {
        "kind": "linear_fit",
        **_subject_fields(model, task, splits, fingerprint),
        "vector_sha256": _values_sha(vector.values),
        "vector_scale": float(vector.scale),
        "vector_operation": vector.operation,
        "vector_sites": [[s.layer, s.position] for s in vector.sites],
        **{k: options[k] for k in sorted(options)},
        "code_version": linear_code_version(),
    }


def _values_sha(values: torch.Tensor) -> str:
    return tensor_digest(values)


@dataclass(frozen=True)
class StoredVector:
    """What a hit returns: the vector and the training record saved beside it."""

    vector: object  # TaskVector
    record: dict  # history, val_accuracy, best_epoch, steps, seconds


class VectorStore:
    """Content-addressed task vectors under ``root`` (default ``$TVLENS_CACHE_DIR/vectors``), and the
    function vector's head AIEs beside them (:meth:`get_tensors` / :meth:`put_tensors`)."""

    def __init__(self, root: str | os.PathLike | None = None):
        from tvlens._io import cache_dir

        self.root = Path(root).expanduser() if root is not None else cache_dir() / "vectors"

    def __repr__(self) -> str:
        return f"VectorStore({str(self.root)!r})"

    @staticmethod
    def key(fields: dict) -> str:
        return _sha(fields)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, fields: dict) -> StoredVector | None:
        """The verified entry for ``fields``, or None (absent, or corrupt: logged, never trusted)."""
        return self._verified(fields, self._read)

    def _verified(self, fields: dict, read):
        """``read(path, key, fields)`` of the entry for ``fields``; None when absent or when any check fails."""
        key = self.key(fields)
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return read(path, key, fields)
        except Exception as e:  # noqa: BLE001 - any failure means: do not trust it, compute it again
            log.warning("store entry %s is unusable (%s: %s); computing it again and replacing it", path, type(e).__name__, e)
            return None

    @staticmethod
    def _header(key: str, fields: dict, record: dict, **checksums) -> str:
        return json.dumps({"format": STORE_FORMAT, "key": key, "fields": json.loads(json.dumps(fields, default=str)),
                           **checksums, "record": record}, allow_nan=False)

    @staticmethod
    def _checked_header(metadata: dict | None, key: str, fields: dict) -> dict:
        """The entry's store header, after checking that it names ``key`` and ``fields``."""
        header = json.loads((metadata or {})["tvlens_store"])
        if header.get("format") != STORE_FORMAT or header.get("key") != key:
            raise ValueError(f"header names key {header.get('key')!r}, expected {key!r}")
        if header.get("fields") != json.loads(json.dumps(fields, default=str)):
            raise ValueError("the header's key fields differ from the request's")
        if not isinstance(header.get("record"), dict):
            raise ValueError("no record")
        return header

    def _read(self, path: Path, key: str, fields: dict) -> StoredVector:
        from safetensors import safe_open

        from tvlens.vector import TaskVector

        with safe_open(str(path), framework="pt") as f:
            header = self._checked_header(f.metadata(), key, fields)
        vector = TaskVector.load(path)  # checks the vector's own header and finiteness
        if _values_sha(vector.values) != header.get("values_sha256"):
            raise ValueError("checksum of the values does not match")
        if vector.model_fingerprint != fields.get("model_fingerprint"):
            raise ValueError("the vector's model fingerprint differs")
        if [[s.layer, s.position] for s in vector.sites] != fields.get("sites"):
            raise ValueError("the vector's sites differ")
        log.info("vector store hit %s (%s, sites %s)", key[:12], fields.get("task"), fields.get("sites"))
        return StoredVector(vector, header["record"])

    def put(self, fields: dict, vector, record: dict) -> Path:
        """Store ``vector`` (a TaskVector) and its training ``record`` under the key of ``fields``."""
        from safetensors import safe_open
        from safetensors.torch import save_file

        from tvlens._io import atomic_write

        key = self.key(fields)
        path = self.path(key)
        header_json = self._header(key, fields, record, values_sha256=_values_sha(vector.values))

        def write(tmp: Path) -> None:
            vector.save(tmp)  # the TaskVector format, then the same tensors with the store header added
            with safe_open(str(tmp), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            save_file(tensors, str(tmp), metadata={**metadata, "tvlens_store": header_json})

        atomic_write(path, write)
        log.info("vector store: saved %s (%s, sites %s)", key[:12], fields.get("task"), fields.get("sites"))
        return path

    def get_tensors(self, fields: dict) -> tuple[dict[str, torch.Tensor], dict] | None:
        """A verified tensor entry (e.g. a head AIE) and its record for ``fields``, or None (absent or corrupt)."""
        return self._verified(fields, self._read_tensors)

    def _read_tensors(self, path: Path, key: str, fields: dict) -> tuple[dict[str, torch.Tensor], dict]:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = self._checked_header(f.metadata(), key, fields)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        sums = header.get("tensors_sha256")
        if not isinstance(sums, dict) or set(sums) != set(tensors):
            raise ValueError("the tensors differ from the header's list")
        for name, t in tensors.items():
            if _values_sha(t) != sums[name]:
                raise ValueError(f"checksum of {name!r} does not match")
        log.info("store hit %s (%s %s)", key[:12], fields.get("kind"), fields.get("task"))
        return tensors, header["record"]

    def put_tensors(self, fields: dict, tensors: dict[str, torch.Tensor], record: dict) -> Path:
        """Store named tensors and a JSON ``record`` under the key of ``fields`` (atomically)."""
        from safetensors.torch import save_file

        from tvlens._io import atomic_write

        key = self.key(fields)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        header_json = self._header(key, fields, record, tensors_sha256={k: _values_sha(v) for k, v in tensors.items()})
        path = atomic_write(self.path(key), lambda tmp: save_file(tensors, str(tmp), metadata={"tvlens_store": header_json}))
        log.info("store: saved %s (%s %s)", key[:12], fields.get("kind"), fields.get("task"))
        return path

    def clear(self) -> int:
        """Remove every entry; returns how many were removed."""
        n = 0
        for p in self.root.glob("*/*.safetensors"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
        return n


def default_store() -> VectorStore | None:
    """The store of ``$TVLENS_CACHE_DIR/vectors``, or None when ``$TVLENS_NO_CACHE`` is set."""
    if os.environ.get(NO_CACHE_ENV, "").strip() not in ("", "0"):
        return None
    return VectorStore()


def resolve(cache) -> VectorStore | None:
    """``cache=`` of the training functions: None -> :func:`default_store`, False -> off,
    True -> the default location even under ``$TVLENS_NO_CACHE``, a path or a :class:`VectorStore`."""
    if cache is None:
        return default_store()
    if cache is False:
        return None
    if cache is True:
        return VectorStore()
    if isinstance(cache, VectorStore):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return VectorStore(cache)
    raise ConfigError(f"cache must be None, True, False, a directory or a tvlens.store.VectorStore, got {type(cache).__name__}")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block the default store is off (sets ``$TVLENS_NO_CACHE``, restored after)."""
    old = os.environ.get(NO_CACHE_ENV)
    os.environ[NO_CACHE_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(NO_CACHE_ENV, None)
        else:
            os.environ[NO_CACHE_ENV] = old
