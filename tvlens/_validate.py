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


# --- analysis inputs: layers, heads, fractions, vectors, output paths ------------------------------


def is_strict_int(value) -> bool:
    import operator

    if isinstance(value, (bool, float, str, bytes)):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_layers(owner: str, name: str, value, n_layers: int, *, low: int = 0) -> tuple[int, ...]:
    """``value`` (an int or a sequence of ints, never text) as sorted distinct layers in ``low..n_layers - 1``.

    >>> check_layers("f", "layers", [3, 1], 5)
    (1, 3)
    >>> check_layers("f", "layers", "34", 5)
    Traceback (most recent call last):
    ...
    tvlens.errors.ConfigError: f: layers must be an integer or a list of integers in 0..4, got str '34'; e.g. layers=[3, 4]
    """
    where = f"{owner}: {name}" if owner else name
    rng = f"0..{n_layers - 1}" if low == 0 else f"{low}..{n_layers - 1}"
    kind = f"an integer or a list of integers in {rng}"
    if is_strict_int(value):
        items = [value]
    elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(f"{where} must be {kind}, got {type(value).__name__} {value!r}; e.g. {name}=[3, 4]")
    else:
        items = list(value)
    bad = [x for x in items if not is_strict_int(x)]
    if bad:
        raise ConfigError(f"{where} must be {kind}, got {type(bad[0]).__name__} {bad[0]!r} in {value!r}; e.g. {name}=[3, 4]")
    if not items:
        raise ConfigError(f"{where} is empty; give at least one layer in {rng}")
    out = sorted({int(x) for x in items})
    outside = [x for x in out if not low <= x < n_layers]
    if outside:
        raise ConfigError(f"{where} must lie in {rng} (this model has {n_layers} layers), got {outside}")
    return tuple(out)


def check_layer(value, n_layers: int) -> int:
    """One layer index: ``None`` is the middle layer (``n_layers // 2``); else an int in ``0..n_layers - 1``.

    >>> check_layer(None, 5), check_layer(4, 5)
    (2, 4)
    >>> check_layer(5, 5)
    Traceback (most recent call last):
    ...
    tvlens.errors.ConfigError: layer 5 is outside the model's layers 0..4 (--layer, layer=)
    """
    if value is None:
        return n_layers // 2
    if not is_strict_int(value) or not 0 <= value < n_layers:
        raise ConfigError(f"layer {value!r} is outside the model's layers 0..{n_layers - 1} (--layer, layer=)")
    return int(value)


def check_positions(owner: str, name: str, value) -> tuple[int, ...]:
    """Prompt positions (an int or a non-empty sequence of ints; -1 = the last token) as a tuple, never text or floats."""
    where = f"{owner}: {name}" if owner else name
    items = [value] if is_strict_int(value) else value
    if isinstance(value, (str, bytes)) or not isinstance(items, Iterable):
        raise ConfigError(f"{where} must be an integer or a list of integers (-1 = last token), got "
                          f"{type(value).__name__} {value!r}; e.g. {name}=(-1,)")
    items = list(items)
    bad = [x for x in items if not is_strict_int(x)]
    if bad or not items:
        raise ConfigError(f"{where} must be a non-empty list of integers (-1 = last token), got {value!r}; e.g. {name}=(-1,)")
    return tuple(int(x) for x in items)


def check_fraction(owner: str, name: str, value) -> float:
    """A share in [0, 1] (inclusive, as documented) as a float."""
    check_float(owner, name, value, min=0, max=1)
    return float(value)


def check_finite(what: str, values, fix: str) -> None:
    """A NonFiniteError naming ``what`` when ``values`` (a tensor) holds nan or inf."""
    import torch

    from tvlens.errors import NonFiniteError

    if isinstance(values, torch.Tensor) and values.is_floating_point() and not bool(torch.isfinite(values).all()):
        n_nan, n_inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
        raise NonFiniteError(f"{what} has non-finite values ({n_nan} nan, {n_inf} inf of {values.numel()}); {fix}")


def check_output_path(path, what: str = "output") -> "Path":
    """``path`` as a Path once its folder exists or can be made, is a folder and is writable, and
    ``path`` itself is not a folder; an :class:`~tvlens.errors.OutputPathError` otherwise, before any work.

    Makes no folder and writes nothing: a missing parent is accepted when its nearest existing
    ancestor is a writable folder (the writer makes the rest).
    """
    import os
    from pathlib import Path

    from tvlens.errors import OutputPathError

    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise OutputPathError(f"{what} must be a file path, got {type(path).__name__} {path!r}")
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputPathError(f"{what} {str(p)!r} is a folder; give a file path inside it, e.g. {str(p / 'out')!r}")
    parent = p.parent if str(p.parent) else Path(".")
    probe = parent
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            raise OutputPathError(f"{what} {str(p)!r}: {str(probe)!r} is a broken link; remove it or choose another folder")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputPathError(f"{what} {str(p)!r} lies under {str(probe)!r}, which is a file, not a folder; "
                              "choose a path in a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {str(p)!r}: the folder {str(probe)!r} is not writable; choose a folder you can write to")
    return p


def check_output_dir(path, what: str = "output folder") -> "Path":
    """Like :func:`check_output_path` for a folder to be made or replaced (``--save-vectors DIR``, ``toy-train --out``)."""
    import os
    from pathlib import Path

    from tvlens.errors import OutputPathError

    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise OutputPathError(f"{what} must be a folder path, got {type(path).__name__} {path!r}")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{what} {str(p)!r} is a file, not a folder; choose a folder path")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputPathError(f"{what} {str(p)!r} is not writable; choose a folder you can write to")
        return p
    return check_output_path(p, what)


UNSET = type("Unset", (), {"__repr__": lambda self: "UNSET", "__bool__": lambda self: False})()  # an argument not given


def renamed(owner: str, old: str, new: str, old_value, new_value):
    """The value of a keyword renamed from ``old`` to ``new``: ``new_value`` unless ``old`` was given
    (``old_value`` is not :data:`UNSET`), then ``old_value`` with a DeprecationWarning."""
    if old_value is UNSET:
        return new_value
    import warnings

    warnings.warn(f"{owner}({old}=...) is now {owner}({new}=...); {old}= will be removed", DeprecationWarning, stacklevel=3)
    return old_value
