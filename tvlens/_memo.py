"""Compute-once caches for the contexts that analyses and claims share (ground level: imports nothing of tvlens)."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


class Memo:
    """A mixin for a (data)class with a ``cache: dict`` field: :meth:`once` computes a value on first use only."""

    cache: dict

    def once(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for; the stored value after that.

        Under :func:`record`, each call is noted (hit or miss, and a miss's seconds).
        """
        rec = _RECORDING.get()
        if rec is not None:
            return rec.once(self, key, compute)
        if key not in self.cache:
            log.info("%s: computing %s", type(self).__name__, _name(key))
            self.cache[key] = compute()
        return self.cache[key]


@dataclass(frozen=True)
class Use:
    """One :meth:`Memo.once` call seen by a :class:`Recording`.

    ``cache`` and ``key`` name the entry (two memos sharing one cache dict share its entries). A miss ran
    ``compute``: ``seconds`` is its wall time, nested ``once`` calls included. A hit's ``source`` is the index (in the
    recording) of the miss that stored the value it took; None when the value was stored before the recording began or
    not through ``once``. ``within``: the indices of the misses whose computes were running around this call,
    outermost first.
    """

    memo: str  # the memo's class name
    cache: int  # id() of the memo's cache dict
    key: Hashable
    hit: bool
    seconds: float = 0.0
    source: int | None = None
    within: tuple[int, ...] = ()
    failed: bool = False  # a miss whose compute raised (nothing was stored)


class Recording:
    """What :func:`record` saw: :attr:`uses`, one per :meth:`Memo.once` call, in the order the calls began."""

    def __init__(self) -> None:
        self.uses: list[Use] = []
        self._running: list[int] = []  # the misses whose computes are running, outermost first
        self._stored: dict[tuple[int, Hashable], int] = {}  # (cache id, key) -> the miss that stored its value

    def __len__(self) -> int:
        return len(self.uses)

    def once(self, memo: Memo, key: Hashable, compute: Callable[[], Any]) -> Any:
        entry, within = (id(memo.cache), key), tuple(self._running)
        if key in memo.cache:
            self.uses.append(Use(type(memo).__name__, entry[0], key, True, source=self._stored.get(entry), within=within))
            return memo.cache[key]
        log.info("%s: computing %s", type(memo).__name__, _name(key))
        i = len(self.uses)
        self.uses.append(Use(type(memo).__name__, entry[0], key, False, within=within))  # a placeholder: nested calls follow it
        self._running.append(i)
        t0, failed = time.perf_counter(), True
        try:
            memo.cache[key] = value = compute()
            failed = False
        finally:
            self._running.pop()
            self.uses[i] = Use(type(memo).__name__, entry[0], key, False, time.perf_counter() - t0, within=within, failed=failed)
            if not failed:
                self._stored[entry] = i
        return value

    def reused(self, start: int, stop: int | None = None) -> dict[int, float]:
        """The entries that the calls ``uses[start:stop]`` took from misses before ``start``: {that miss's index: its
        seconds}, each entry once. An entry whose compute ran inside the compute of another entry taken here is left
        out (its seconds are already in that one's), so the seconds add up without counting any twice."""
        taken = {u.source for u in self.uses[start:stop] if u.hit and u.source is not None and u.source < start}
        return {i: self.uses[i].seconds for i in sorted(taken) if not taken.intersection(self.uses[i].within)}


_RECORDING: contextvars.ContextVar[Recording | None] = contextvars.ContextVar("tvlens_memo_recording", default=None)


@contextlib.contextmanager
def record() -> Iterator[Recording]:
    """Note every :meth:`Memo.once` call in this context (this thread or task) until the block ends.

    An inner ``record()`` takes the calls of its block; the outer one sees none of them. Without one, ``once`` does
    nothing more than look the key up.
    """
    rec = Recording()
    token = _RECORDING.set(rec)
    try:
        yield rec
    finally:
        _RECORDING.reset(token)


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


HOOK_KINDS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def user_torch_hooks(model: torch.nn.Module, kinds: tuple[str, ...] = HOOK_KINDS) -> list[tuple[str, str]]:
    """``(module name, hook kind)`` of every torch hook on ``model`` except a backend's own capture hooks.

    TransformerLens's TransformerBridge keeps the handles of the pre-hooks it wires onto each block's
    norms in ``_capture_hook_handles`` (they record inputs and compute nothing); those are left out. The
    backend-facing entry point is :func:`tvlens._backend.user_torch_hooks`.
    """
    hooked = [(name, kind, getattr(module, kind)) for name, module in model.named_modules() for kind in kinds
              if getattr(module, kind)]
    if not hooked:  # the common case on the hooked backend: one walk, no capture handles to read
        return []
    own = set()
    for module in model.modules():
        for handle in getattr(module, "_capture_hook_handles", ()):
            ref = handle.hooks_dict_ref()
            if ref is not None:
                own.add((id(ref), handle.id))
    return [(name, kind) for name, kind, hooks in hooked if any((id(hooks), key) not in own for key in hooks)]


def weights_key(model: torch.nn.Module) -> tuple:
    """A key of ``model``'s current weights: each parameter's identity, storage, version counter, dtype and device (an
    in-place update, a new tensor or a move gives a new key). Writes through ``param.data`` bypass the version counter
    and go unseen, as they do for autograd."""
    return tuple((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


def memo_key(model: torch.nn.Module) -> tuple | None:
    """A key of what ``model`` computes now, for an in-process memo of its activations: :func:`weights_key` and torch's
    thread count (CPU kernels may round differently at another count, so a hit is exactly what computing again would
    give).

    None while any forward hook or pre-hook is installed anywhere in the model: what it computes then depends on the
    hooks, and a memo must neither serve nor keep it.
    """
    if user_torch_hooks(model, ("_forward_hooks", "_forward_pre_hooks")):
        return None
    return (torch.get_num_threads(), *weights_key(model))
