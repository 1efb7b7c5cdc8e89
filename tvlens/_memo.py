"""Compute-once caches for the contexts that analyses and claims share (ground level: imports nothing of tvlens)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Hashable
from typing import Any

import torch

log = logging.getLogger(__name__)


class Memo:
    """A mixin for a (data)class with a ``cache: dict`` field: :meth:`once` computes a value on first use only."""

    cache: dict

    def once(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for; the stored value after that."""
        if key not in self.cache:
            log.info("%s: computing %s", type(self).__name__, _name(key))
            self.cache[key] = compute()
        return self.cache[key]


def _name(key: Hashable) -> Hashable:
    """A key's name for the log: a tuple's first item (keys are often ``("name", *arguments)``), else the key."""
    return key[0] if isinstance(key, tuple) and key else key


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' dtypes, shapes and bytes (any dtype, bfloat16 included; device and layout ignored)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def memo_key(model: torch.nn.Module) -> tuple | None:
    """A key of what ``model`` computes now, for an in-process memo of its activations: each parameter's identity,
    storage, version counter, dtype and device (an in-place update, a new tensor or a move gives a new key), and
    torch's thread count (CPU kernels may round differently at another count, so a hit is exactly what computing
    again would give).

    None while any forward hook or pre-hook is installed anywhere in the model: what it computes then depends on the
    hooks, and a memo must neither serve nor keep it. (Writes through ``param.data`` bypass the version counter and
    go unseen, as they do for autograd.)
    """
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return None
    return (torch.get_num_threads(), *((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters()))
