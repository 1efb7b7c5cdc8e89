"""Progress: one bar per command, with its current stage and an ETA, instead of a bar per inner loop.

Context:
    A command such as ``tvlens report`` runs loops inside loops (sections, then the layers of a
    sweep, then the steps of each LTV). Each loop asks this module for a bar with :func:`bar`.
    Outside a command (a notebook calling ``tv.train_ltv``) that is a plain tqdm bar, as before.
    Inside :func:`command` it is a *stage*: no bar of its own, but its count is written into the
    command's one bar as ``stage i/n › inner j/m``, and its fraction moves that bar, so the bar's
    ETA follows the nested loops (the current section's share, plus the current layer's share of
    that section, and so on).

>>> from tvlens import _progress
>>> with _progress.command("demo", enabled=False) as cmd:
...     for _ in _progress.bar(range(4), desc="outer"):
...         with _progress.bar(total=2, desc="inner") as inner:
...             inner.update(1)
...             seen = (cmd.stage_text, cmd.fraction)
...             inner.update(1)
>>> seen  # during the last of the 4 outer items, half-way through its inner loop
('outer 3/4 › inner 1/2', 0.875)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator

__all__ = ["Command", "bar", "command", "current"]

_ACTIVE: contextvars.ContextVar[Command | None] = contextvars.ContextVar("tvlens_progress", default=None)

_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}"
_MIN_INTERVAL = 0.1  # seconds between redraws (a training loop updates its stage every step)


class Command:
    """The one bar of a command: a stack of open stages, each with its count and total."""

    def __init__(self, desc: str, enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        # disable=None: tqdm's own rule (shown on a terminal, not when stderr is a file or a pipe)
        self.bar = tqdm(total=1.0, desc=desc, bar_format=_FORMAT, disable=None if enabled is None else not enabled)
        self.stack: list[_Stage] = []
        self._drawn = 0.0

    @property
    def fraction(self) -> float:
        """Done share of the command: each open stage's count, nested inside its parent's current item."""
        frac, width = 0.0, 1.0
        for s in self.stack:
            if not s.total:
                continue  # a stage of unknown length moves nothing
            frac += width * min(s.n, s.total) / s.total
            width /= s.total
        return min(frac, 1.0)

    @property
    def stage_text(self) -> str:
        return " › ".join(s.text() for s in self.stack)

    def refresh(self, force: bool = False) -> None:
        if self.bar.disable:
            return
        import time

        now = time.monotonic()
        if not force and now - self._drawn < _MIN_INTERVAL:
            return
        self._drawn = now
        self.bar.n = self.fraction
        self.bar.set_postfix_str(self.stage_text, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if not self.bar.disable and not self.stack:
            self.bar.n = 1.0
            self.bar.set_postfix_str("done", refresh=False)
        self.bar.close()


class _Stage:
    """An inner loop inside a command: tqdm's ``update``/``set_postfix``/``close`` and iteration, no bar."""

    def __init__(self, cmd: Command, iterable: Iterable | None, total: int | float | None, desc: str, initial: int | float = 0) -> None:
        if total is None and iterable is not None:
            total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        self.cmd, self.iterable, self.total, self.desc, self.n, self.postfix = cmd, iterable, total, desc, initial, ""
        cmd.stack.append(self)
        cmd.refresh(force=True)

    def text(self) -> str:
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        return f"{self.desc} {count}" + (f" ({self.postfix})" if self.postfix else "")

    def update(self, n: int | float = 1) -> None:
        self.n += n
        self.cmd.refresh()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())
        if refresh:
            self.cmd.refresh()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s
        if refresh:
            self.cmd.refresh()

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""
        if refresh:
            self.cmd.refresh()

    def close(self) -> None:
        if self in self.cmd.stack:
            # a stage closes with everything opened inside it (a loop left by an exception)
            del self.cmd.stack[self.cmd.stack.index(self):]
            self.cmd.refresh(force=True)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.n += 1
                self.cmd.refresh()
        finally:
            self.close()

    def __enter__(self) -> _Stage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def current() -> Command | None:
    """The command bar in force (None outside :func:`command`)."""
    return _ACTIVE.get()


def bar(iterable: Iterable | None = None, *, total: int | float | None = None, desc: str = "", disable: bool | None = None,
        leave: bool = True, **kwargs):
    """An inner loop's progress: a stage of the command bar inside :func:`command`, else a tqdm bar.

    Takes tqdm's arguments. Inside a command the stage counts even where ``disable`` is set: the
    command's one bar is what is shown, and each loop's share moves its ETA.
    """
    cmd = _ACTIVE.get()
    if cmd is not None:
        return _Stage(cmd, iterable, total, desc, kwargs.get("initial", 0))
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=leave, **kwargs)


@contextlib.contextmanager
def command(desc: str, *, enabled: bool | None = None) -> Iterator[Command]:
    """One bar for everything run inside: the inner loops' :func:`bar` calls become its stages.

    ``enabled=None`` shows it where tqdm would (a terminal on stderr); log records are written
    above the bar rather than through it.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    cmd = Command(desc, enabled)
    token = _ACTIVE.set(cmd)
    try:
        with logging_redirect_tqdm():
            yield cmd
    finally:
        _ACTIVE.reset(token)
        cmd.close()
