"""Checks for config fields: each error names the field, what it got and the allowed range."""

from __future__ import annotations

import math
from collections.abc import Iterable

from tvlens.errors import ConfigError


def _where(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def check_int(owner: str, name: str, value, *, min: int | None = None, max: int | None = None) -> None:
    """``value`` must be an int (not a bool, not a float) within [min, max]."""
    import operator

    where = _where(owner, name)
    rng = _range(min, max, "an integer")
    if isinstance(value, bool) or isinstance(value, float):
        raise ConfigError(f"{where} must be {rng}, got {type(value).__name__} {value!r}")
    try:
        operator.index(value)
    except TypeError:
        raise ConfigError(f"{where} must be {rng}, got {type(value).__name__} {value!r}") from None
    if (min is not None and value < min) or (max is not None and value > max):
        raise ConfigError(f"{where} must be {rng}, got {value!r}")


def check_float(owner: str, name: str, value, *, min: float | int | None = None, max: float | int | None = None,
                min_exclusive: bool = False) -> None:
    """``value`` must be a finite real number (ints allowed, bools and nan/inf not) within the range."""
    where = _where(owner, name)
    lo = None if min is None else (f"> {min}" if min_exclusive else f">= {min}")
    rng = "a finite number" + (f" {lo}" if lo else "") + (f" and <= {max}" if max is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be {rng}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be {rng}, got {value!r}")
    too_low = min is not None and (value <= min if min_exclusive else value < min)
    if too_low or (max is not None and value > max):
        raise ConfigError(f"{where} must be {rng}, got {value!r}")


def check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{_where(owner, name)} must be True or False, got {type(value).__name__} {value!r}")


def check_choice(owner: str, name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices or isinstance(value, bool):
        raise ConfigError(f"{_where(owner, name)} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _range(lo, hi, kind: str) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in {lo}..{hi}"
    if lo is not None:
        return f"{kind} >= {lo}"
    if hi is not None:
        return f"{kind} <= {hi}"
    return kind


def no_type_check(obj):
    """Mark a class or function that checks its own arguments and raises tvlens's typed errors.

    It does nothing at run time. Test runs wrap every tvlens function in a runtime type checker
    (jaxtyping's import hook with beartype, see ``pyproject.toml``), which would answer a bad
    argument with its own ``TypeCheckError`` before our checks could name the field and the fix.
    That hook skips anything decorated with a name ``no_type_check``; unlike
    ``typing.no_type_check``, this one leaves the annotations to static type checkers.
    """
    return obj
