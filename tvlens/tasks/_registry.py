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
    for key in [k for k in _CACHE if k == name or k.startswith(f"{name}[")]:
        _CACHE.pop(key)


def names(prefix: str | None = None) -> list[str]:
    """Registered task names, sorted; ``prefix="toy/"`` lists the embedded model's tasks."""
    return sorted(n for n in _FACTORIES if prefix is None or n.startswith(prefix))


def describe(name: str) -> str:
    """The one-line description of a registered task (no data is loaded)."""
    _check(name)
    return _FACTORIES[name][1]


def get(name: str, *, template: str | None = None) -> Task:
    """The task registered under ``name`` (built on first use, then cached).

    ``template`` (``"arrow"``, ``"qa"`` or a query string with ``{x}``) formats it another way;
    a name such as ``"capitalize[arrow]"`` says the same. Under its own default template the task
    keeps its plain name, under any other its name carries the template (``capitalize[arrow]``).
    """
    from tvlens.tasks._templates import split_name
    from tvlens.tasks._templates import template as as_template

    base, in_name = (name, None) if name in _FACTORIES else split_name(name)
    if in_name is not None and template is not None and as_template(in_name) != as_template(template):
        raise TaskNotFoundError(f"task {name!r} names template {in_name!r} but template={template!r} was given; give one of them")
    spec = template if template is not None else in_name
    _check(base)
    if base not in _CACHE:
        _CACHE[base] = _FACTORIES[base][0]()
    task = _CACHE[base]
    if spec is None:
        return task
    t = as_template(spec)
    key = f"{base}[{t.name}]"
    if key not in _CACHE:
        _CACHE[key] = task.with_template(t)  # the task itself when that is its own format (plain name)
    return _CACHE[key]


def resolve(name: str, *, model_name: str | None = None, template: str | None = None) -> Task:
    """Like :func:`get`, but for the embedded model ``"antonym"`` also finds ``"toy/antonym"``."""
    from tvlens.tasks._templates import split_name

    base, in_name = split_name(name)
    if model_name == "toy" and f"toy/{base}" in _FACTORIES:
        return get(f"toy/{base}" + (f"[{in_name}]" if in_name is not None else ""), template=template)
    return get(name, template=template)


def _check(name: str) -> None:
    if name not in _FACTORIES:
        import difflib

        close = difflib.get_close_matches(name, list(_FACTORIES), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise TaskNotFoundError(
            f"no task named {name!r}.{hint} See tvlens.tasks.names() (or `tvlens tasks`); "
            "build your own with tvlens.tasks.from_pairs / from_file / from_dataset."
        )
