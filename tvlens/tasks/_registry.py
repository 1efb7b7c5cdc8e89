"""The task registry: names -> task factories, resolved lazily (hub datasets load on demand)."""

from __future__ import annotations

from collections.abc import Callable

from tvlens.errors import TaskNotFoundError
from tvlens.tasks._task import Task

_FACTORIES: dict[str, tuple[Callable[[], Task], str]] = {}
_CACHE: dict[str, Task] = {}


def register(name: str, factory: Callable[[], Task] | Task, description: str = "", *, overwrite: bool = False) -> None:
    """Register a task (or a zero-argument factory building it) under ``name``."""
    if name in _FACTORIES and not overwrite:
        raise ValueError(f"task {name!r} is already registered; pass overwrite=True to replace it")
    if isinstance(factory, Task):
        task = factory
        factory, description = (lambda: task), description or task.description
    _FACTORIES[name] = (factory, description)
    _CACHE.pop(name, None)


def names(prefix: str | None = None) -> list[str]:
    """Registered task names, sorted; ``prefix="toy/"`` lists the embedded model's tasks."""
    return sorted(n for n in _FACTORIES if prefix is None or n.startswith(prefix))


def describe(name: str) -> str:
    """The one-line description of a registered task (no data is loaded)."""
    _check(name)
    return _FACTORIES[name][1]


def get(name: str) -> Task:
    """The task registered under ``name`` (built on first use, then cached)."""
    _check(name)
    if name not in _CACHE:
        _CACHE[name] = _FACTORIES[name][0]()
    return _CACHE[name]


def resolve(name: str, *, model_name: str | None = None) -> Task:
    """Like :func:`get`, but for the embedded model ``"antonym"`` also finds ``"toy/antonym"``."""
    if model_name == "toy" and f"toy/{name}" in _FACTORIES:
        return get(f"toy/{name}")
    return get(name)


def _check(name: str) -> None:
    if name not in _FACTORIES:
        import difflib

        close = difflib.get_close_matches(name, list(_FACTORIES), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise TaskNotFoundError(
            f"no task named {name!r}.{hint} See tvlens.tasks.names() (or `tvlens tasks`); "
            "build your own with tvlens.tasks.from_pairs / from_file / from_dataset."
        )
