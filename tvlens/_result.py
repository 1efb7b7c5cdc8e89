"""The result convention: every analysis returns a frozen dataclass that mixes in :class:`Result`.

Context:
    A result is a value: declare it ``@dataclass(frozen=True, eq=False, repr=False)`` and mix in
    :class:`Result`. ``eq=False`` keeps Python's identity ``==`` and ``hash`` (a generated ``==``
    would compare tensors elementwise and raise; a generated hash would fail on them); ``repr=False``
    lets the short :meth:`Result.__repr__` through (or define your own ``__repr__``). A result gets
    ``to_frame()`` (pandas), ``plot()`` (plotly, imported lazily), ``_repr_html_`` for notebooks, and
    ``to_json()`` / ``from_json()`` / ``save()`` / ``load()``: tensors, tuples and nested tvlens
    dataclasses (vectors, sites, tasks) round-trip exactly; nothing is ever unpickled and only
    tvlens dataclasses (and the result class the caller names) are rebuilt.

>>> import torch
>>> from dataclasses import dataclass
>>> from tvlens._result import Result
>>> @dataclass(frozen=True, eq=False, repr=False)
... class Scores(Result):
...     name: str
...     values: torch.Tensor
>>> s = Scores("demo", torch.tensor([0.5, 0.25]))
>>> s
Scores(name='demo', values=f32[2])
>>> Scores.from_json(s.to_json()).values
tensor([0.5000, 0.2500])
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import json
import math
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from jaxtyping import Int

from tvlens.errors import CheckpointError, ConfigError

R = TypeVar("R", bound="Result")
FORMAT = "tvlens-result/1"
_REPR_MAX = 160  # characters of the automatic __repr__


def short(value: Any) -> str:
    """A few characters naming ``value``: tensors by dtype and shape, long containers by length."""
    if isinstance(value, torch.Tensor):
        dt = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16",
              torch.int64: "i64", torch.int32: "i32", torch.bool: "bool"}.get(value.dtype, str(value.dtype))
        return f"{dt}[{','.join(map(str, value.shape))}]"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)) and (len(value) > 3 or any(isinstance(v, (torch.Tensor, dict)) for v in value)):
        return f"<{len(value)} {type(value).__name__}>"
    if isinstance(value, dict) and len(value) > 3:
        return f"<dict of {len(value)}>"
    if dataclasses.is_dataclass(value) and not isinstance(value, Result) and type(value).__repr__ is object.__repr__:
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Result:
    """Mixin giving a frozen result dataclass frames, plots, short reprs and JSON files."""

    # --- for notebooks ---------------------------------------------------------------------

    def to_frame(self):
        """A pandas DataFrame; the default is one row of the scalar fields."""
        import pandas as pd

        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return pd.DataFrame([{k: v for k, v in row.items() if isinstance(v, (str, int, float, bool)) or v is None}])

    def plot(self):
        """A plotly figure; the default is a table of :meth:`to_frame`."""
        import plotly.graph_objects as go

        df = self.to_frame()
        return go.Figure(go.Table(header={"values": list(df.columns)}, cells={"values": [df[c] for c in df.columns]}))

    def __repr__(self) -> str:
        parts = [f"{f.name}={short(getattr(self, f.name))}" for f in dataclasses.fields(self) if f.repr]
        text = f"{type(self).__name__}({', '.join(parts)})"
        return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 4] + "...)"

    def _repr_html_(self) -> str:
        head = f"<pre>{html.escape(repr(self))}</pre>"
        try:
            df = self.to_frame()
        except Exception as e:  # a repr must never raise in a notebook
            return head + f"<p>(no table: {html.escape(type(e).__name__)})</p>"
        more = f"<p>{len(df)} rows; first 20 shown</p>" if len(df) > 20 else ""
        return head + df.head(20).to_html(max_cols=12) + more

    # --- for the CLI and the report ----------------------------------------------------------

    def payload(self) -> dict:
        """The JSON document of ``tvlens analyze`` (plain numbers, lists and text); the default: every
        field, tensors as nested lists, nested results as their own payloads."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.repr}

    def summary(self) -> dict:
        """The headline numbers as a dict of plain values (every result's ``summary()`` is a dict; tables are
        :meth:`to_frame`). The default: the scalar entries of :meth:`payload`."""
        return {k: v for k, v in self.payload().items() if v is None or isinstance(v, (str, int, float, bool))}

    def text(self) -> str:
        """What ``tvlens analyze`` prints: the repr, then :meth:`to_frame` as a table."""
        try:
            table = self.to_frame().to_string(index=False, float_format=lambda x: f"{x:.3f}")
        except Exception as e:  # text must not fail where the payload does not
            table = f"(no table: {type(e).__name__})"
        return f"{self!r}\n{table}"

    # --- files -----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-able form (tensors, tuples and tvlens dataclasses tagged so they come back)."""
        return {"format": FORMAT, "type": _qualname(type(self)), "fields": _encode_fields(self)}

    def to_json(self, indent: int | None = None) -> str:
        """Strict JSON (no ``NaN``/``Infinity`` literals: non-finite numbers are encoded explicitly)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    # --- the declared shapes a file is checked against (override per class where dims bind to fields) ---

    @classmethod
    def declared_shapes(cls) -> dict[str, tuple[str | None, str]]:
        """``{field: (dims, dtype kind)}`` of every tensor field: dims from its jaxtyping annotation
        (``Float[torch.Tensor, "layer head"]`` -> ``"layer head"``; None: any shape), kind ``"float"``,
        ``"int"``, ``"bool"`` or ``"any"``. The default reads the annotations."""
        return _annotated_shapes(cls)

    @classmethod
    def declared_dims(cls, fields: dict) -> dict[str, int]:
        """Sizes that named dims must have given the other decoded ``fields`` (default: none; e.g.
        ``{"condition": len(fields["conditions"])}``). Dims sharing a name must agree in any case."""
        return {}

    @classmethod
    def from_json(cls: type[R], text: str, *, source: str = "the text") -> R:
        """Rebuild a result from :meth:`to_json` (only tvlens classes are instantiated).

        Every way a file can be damaged, foreign or edited raises :class:`CheckpointError` naming
        ``source`` and what is wrong; tensors are checked against :meth:`declared_shapes` (dims,
        dtype) and :meth:`declared_dims` before the result is built.
        """
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except (json.JSONDecodeError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{source} is not a tvlens result: invalid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{source} is not a tvlens result (format {FORMAT!r}); write results with .save(path)")
        name, fields = data.get("type"), data.get("fields")
        if not isinstance(name, str) or not isinstance(fields, dict):
            raise CheckpointError(f"{source}: 'type' must be a class name and 'fields' an object; the file is damaged or hand-edited")
        try:
            klass = cls if name == _qualname(cls) else _class(name)  # cls: named by the caller
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from None
        if not (isinstance(klass, type) and issubclass(klass, cls)):
            raise CheckpointError(f"{source} holds a {name}, not a {cls.__name__}")
        try:
            decoded = {k: _decode(v) for k, v in fields.items()}
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from None
        except (KeyError, TypeError, ValueError, RuntimeError, OverflowError, RecursionError) as e:
            raise CheckpointError(f"{source}: a damaged value in a {klass.__name__} file ({type(e).__name__}: {e}); "
                                  "save the result again") from None
        init = {f.name for f in dataclasses.fields(klass) if f.init}
        required = {f.name for f in dataclasses.fields(klass) if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        unknown, missing = sorted(set(fields) - init), sorted(required - set(fields))
        if unknown or missing:
            raise CheckpointError(f"{source}: a {klass.__name__} file " + (f"has unknown fields {unknown}" if unknown else "")
                                  + (" and " if unknown and missing else "") + (f"lacks fields {missing}" if missing else "")
                                  + "; it was edited or written by another tvlens version: save it again")
        _check_shapes(klass, decoded, source)
        try:
            return klass(**decoded)
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"{source}: its fields do not make a {klass.__name__} ({type(e).__name__}: {e}); "
                                  "the file was edited: save the result again") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (:func:`tvlens._io.atomic_write`)."""
        from tvlens._io import atomic_write
        from tvlens._validate import check_output_path

        check_output_path(path, f"{type(self).__name__}.save path")
        text = self.to_json()
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """Read a file written by :meth:`save`; any damaged, foreign or edited file is a CheckpointError naming it."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no result file at {str(path)!r}")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{str(path)!r} is not a tvlens result: not UTF-8 text (byte {e.start}); "
                                  "was it written by Result.save?") from None
        except OSError as e:
            raise CheckpointError(f"{str(path)!r} cannot be read ({e.strerror or e})") from None
        return cls.from_json(text, source=repr(str(path)))


# --- encoding ------------------------------------------------------------------------------------


def _qualname(klass: type) -> str:
    return f"{klass.__module__}:{klass.__qualname__}"


def _class(name: str) -> type:
    module, _, qual = name.partition(":")
    if not (module == "tvlens" or module.startswith("tvlens.")) or not qual:
        raise CheckpointError(f"refusing to rebuild {name!r}: results hold only tvlens classes")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise CheckpointError(f"unknown class {name!r} in a result file (written by another tvlens version?)") from None
    if not dataclasses.is_dataclass(obj):
        raise CheckpointError(f"refusing to rebuild {name!r}: not a tvlens dataclass")
    return obj


def _encode_fields(obj) -> dict:
    return {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}


_DTYPES = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"}


def _refuse_constant(name: str):
    raise ValueError(f"the non-standard literal {name} (result files are strict JSON)")


def _float_code(x: float):
    """A float as strict JSON: finite as is, nan/inf as {"__float__": "nan" | "inf" | "-inf"}."""
    return x if math.isfinite(x) else {"__float__": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}


def _encode(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu()
        flat = t.flatten()
        out = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        if t.is_floating_point() and not bool(torch.isfinite(flat).all()):
            bad = (~torch.isfinite(flat)).nonzero().flatten()
            kinds = ["nan" if math.isnan(x) else ("inf" if x > 0 else "-inf") for x in flat[bad].tolist()]
            data = flat.tolist()
            for i in bad.tolist():
                data[i] = None
            out["nonfinite"] = [[i, k] for i, k in zip(bad.tolist(), kinds)]  # the mask of the nulls in data
        else:
            data = flat.tolist()
        return {"__tensor__": {**out, "data": data}}
    if isinstance(v, float):
        return _float_code(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {"__dataclass__": _qualname(type(v)), "fields": _encode_fields(v)}
    if isinstance(v, tuple):
        return {"__tuple__": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v) and not any(k.startswith("__") for k in v):
            return {k: _encode(x) for k, x in v.items()}
        return {"__items__": [[_encode(k), _encode(x)] for k, x in v.items()]}
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    raise TypeError(f"cannot write a {type(v).__name__} to a result file; use tensors, numbers, text, tuples, dicts")


def _decode(v: Any) -> Any:
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "__float__" in v:
        code = v["__float__"]
        if code not in ("nan", "inf", "-inf"):
            raise CheckpointError(f"unknown float code {code!r} (nan, inf or -inf)")
        return float(code)
    if "__tensor__" in v:
        return _decode_tensor(v["__tensor__"])
    if "__dataclass__" in v:
        return _class(v["__dataclass__"])(**{k: _decode(x) for k, x in v["fields"].items()})
    if "__tuple__" in v:
        return tuple(_decode(x) for x in v["__tuple__"])
    if "__items__" in v:
        return {_decode(k): _decode(x) for k, x in v["__items__"]}
    return {k: _decode(x) for k, x in v.items()}


def _decode_tensor(t: Any) -> torch.Tensor:
    if not isinstance(t, dict) or not {"dtype", "shape", "data"} <= set(t):
        raise CheckpointError("a tensor entry lacks dtype, shape or data")
    name, shape, data = t["dtype"], t["shape"], t["data"]
    if not isinstance(name, str) or name not in _DTYPES:
        raise CheckpointError(f"unknown tensor dtype {name!r} (one of {sorted(_DTYPES)})")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise CheckpointError(f"a tensor shape must be a list of integers >= 0, got {shape!r}")
    numel = math.prod(shape)
    if not isinstance(data, list) or len(data) != numel:
        raise CheckpointError(f"a tensor of shape {shape} needs {numel} numbers, got "
                              f"{len(data) if isinstance(data, list) else type(data).__name__}")
    data = list(data)
    for entry in t.get("nonfinite", []):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int) and 0 <= entry[0] < numel
                and entry[1] in ("nan", "inf", "-inf") and data[entry[0]] is None):
            raise CheckpointError(f"a damaged non-finite mask entry {entry!r}")
        data[entry[0]] = float(entry[1])
    ok = (bool,) if name == "bool" else (int,) if name.startswith(("int", "uint")) else (int, float)
    if not all(isinstance(x, ok) and (name == "bool" or not isinstance(x, bool)) for x in data):
        bad = next(x for x in data if not (isinstance(x, ok) and (name == "bool" or not isinstance(x, bool))))
        raise CheckpointError(f"a {name} tensor holds {bad!r}")
    return torch.tensor(data, dtype=getattr(torch, name)).reshape(shape)


def _annotated_shapes(klass: type) -> dict[str, tuple[str | None, str]]:
    import typing

    try:
        hints = typing.get_type_hints(klass)
    except Exception:  # an annotation that does not resolve: no declared shapes
        return {}
    out = {}
    for f in dataclasses.fields(klass):
        hint = hints.get(f.name)
        for h in (hint, *typing.get_args(hint)):
            dims = getattr(h, "dim_str", None)
            if dims is not None:
                kinds = set(getattr(h, "dtypes", ()) or ())
                kind = ("bool" if kinds and kinds <= {"bool", "bool_"} else "float" if any(k.startswith("float") for k in kinds)
                        and not any(k.startswith("int") for k in kinds) else "int" if any(k.startswith("int") for k in kinds)
                        and not any(k.startswith("float") for k in kinds) else "any")
                out[f.name] = (dims, kind)
                break
            if h is torch.Tensor:
                out[f.name] = (None, "any")
                break
    return out


def _check_shapes(klass, fields: dict, source: str) -> None:
    """Each tensor field against ``klass.declared_shapes()``/``declared_dims()`` (named dims agree), before building."""
    try:
        bound = dict(klass.declared_dims(fields))
    except Exception:  # the other fields are damaged too: the constructor will say so
        bound = {}
    seen: dict[str, tuple[int, str]] = {}
    for name, (dims, kind) in klass.declared_shapes().items():
        value = fields.get(name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {klass.__name__}.{name} must be a tensor, got {type(value).__name__}")
        dt = value.dtype
        is_kind = {"float": dt.is_floating_point, "bool": dt == torch.bool,
                   "int": not dt.is_floating_point and not dt.is_complex and dt != torch.bool, "any": True}[kind]
        if not is_kind:
            raise CheckpointError(f"{source}: {klass.__name__}.{name} must hold {kind} numbers, got {dt}")
        if dims is None:
            continue
        names = dims.split()
        variadic = any(d.startswith("*") or d == "..." for d in names)
        if not variadic and value.ndim != len(names):
            raise CheckpointError(f"{source}: {klass.__name__}.{name} must have shape [{', '.join(names)}], got {list(value.shape)}")
        if variadic:
            continue
        for d, size in zip(names, value.shape):
            d = d.lstrip("#_")
            if d.isdigit():
                if int(d) != size:
                    raise CheckpointError(f"{source}: {klass.__name__}.{name} must have size {d} on that axis, got {list(value.shape)}")
                continue
            if d in bound and bound[d] != size:
                raise CheckpointError(f"{source}: {klass.__name__}.{name} has {size} entries along {d!r}, but its other "
                                      f"fields give {bound[d]}; the file was edited or damaged")
            if d in seen and seen[d][0] != size:
                raise CheckpointError(f"{source}: {klass.__name__}.{name} has {size} entries along {d!r}, but "
                                      f"{seen[d][1]} has {seen[d][0]}; the file was edited or damaged")
            seen.setdefault(d, (size, name))


def _plain(v: Any) -> Any:
    """``v`` as JSON-able plain data (for :meth:`Result.payload`)."""
    if isinstance(v, Result):
        return v.payload()
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return str(v)
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


# --- accuracy by condition -----------------------------------------------------------------------


def count_accuracy(correct: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """``correct / n`` as float32, bit for bit what ``(pred == gold).float().mean()`` gave over ``n`` queries
    (an exact float32 sum divided once): per-layer results store counts and read accuracies through this."""
    return correct.to(torch.float32) / (n.to(torch.float32) if isinstance(n, torch.Tensor) else n)


@dataclass(frozen=True, eq=False, repr=False)
class ConditionAccuracy(Result):
    """The base of accuracy-by-condition results: ``correct[i]`` of ``n`` queries under ``conditions[i]``.

    Subclasses add their own fields after these (with defaults where needed) and inherit
    :meth:`accuracy`, :meth:`interval` (95% Wilson), :meth:`to_frame`, :meth:`plot`,
    :meth:`payload` and :meth:`text`.

    >>> import torch
    >>> r = ConditionAccuracy("demo", ("zero_shot", "ltv"), torch.tensor([3, 9]), 10)
    >>> r.accuracy("ltv"), [round(x, 3) for x in r.interval("ltv")]
    (0.9, [0.596, 0.982])
    >>> list(r.to_frame().columns)
    ['condition', 'accuracy', 'ci_low', 'ci_high', 'n', 'correct']
    """

    task: str
    conditions: tuple[str, ...]
    correct: Int[torch.Tensor, " condition"]  # queries answered correctly per condition
    n: int  # queries per condition

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))
        if not self.conditions:
            from tvlens.errors import DegenerateInputError

            raise DegenerateInputError(f"{type(self).__name__} needs at least one condition; got none")
        if self.correct.shape != (len(self.conditions),):
            raise ConfigError(f"correct must hold one count per condition ({len(self.conditions)}), got shape {tuple(self.correct.shape)}")
        if self.n < 1 or bool((self.correct < 0).any()) or bool((self.correct > self.n).any()):
            raise ConfigError(f"counts must lie in 0..n with n >= 1, got n={self.n}, correct={self.correct.tolist()}")

    @classmethod
    def declared_dims(cls, fields: dict) -> dict[str, int]:
        conditions = fields.get("conditions")
        return {"condition": len(conditions)} if isinstance(conditions, (list, tuple)) else {}

    def _index(self, condition: str) -> int:
        if condition not in self.conditions:
            raise ConfigError(f"unknown condition {condition!r}; the conditions are {list(self.conditions)}")
        return self.conditions.index(condition)

    def accuracy(self, condition: str) -> float:
        """Share of the ``n`` queries answered correctly under ``condition``."""
        return int(self.correct[self._index(condition)]) / self.n

    @property
    def accuracies(self) -> dict[str, float]:
        return {c: int(k) / self.n for c, k in zip(self.conditions, self.correct)}

    def interval(self, condition: str) -> tuple[float, float]:
        """The 95% Wilson interval of :meth:`accuracy`."""
        from tvlens.stats import wilson_interval

        return wilson_interval(int(self.correct[self._index(condition)]), self.n)

    def to_frame(self):
        """One row per condition: condition, accuracy, ci_low, ci_high, n, correct."""
        import pandas as pd

        ci = [self.interval(c) for c in self.conditions]
        return pd.DataFrame({"condition": list(self.conditions), "accuracy": [int(k) / self.n for k in self.correct],
                             "ci_low": [a for a, _ in ci], "ci_high": [b for _, b in ci], "n": self.n,
                             "correct": [int(k) for k in self.correct]})

    def plot(self):
        """Bars per condition with their 95% intervals."""
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure(go.Bar(x=df.condition, y=df.accuracy, error_y={"type": "data", "symmetric": False,
                                                                       "array": df.ci_high - df.accuracy,
                                                                       "arrayminus": df.accuracy - df.ci_low}))
        fig.update_layout(title=f"{type(self).__name__} ({self.task}, n={self.n})", yaxis_range=[0, 1],
                          yaxis_title="accuracy", xaxis_title="condition")
        return fig

    def payload(self) -> dict:
        """Task, n, and per condition: accuracy, correct, ci95; then any further fields of a subclass."""
        base = {"task": self.task, "n": self.n,
                "conditions": {c: {"accuracy": int(k) / self.n, "correct": int(k), "ci95": list(self.interval(c))}
                               for c, k in zip(self.conditions, self.correct)}}
        skip = {"task", "conditions", "correct", "n"}
        return {**base, **{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.repr and f.name not in skip}}

    def summary(self) -> dict:
        """Task, n, and per condition the accuracy and its 95% Wilson interval."""
        return {"task": self.task, "n": self.n, "accuracy": self.accuracies,
                "ci95": {c: list(self.interval(c)) for c in self.conditions}}

    def text(self) -> str:
        width = max(len(c) for c in self.conditions)
        lines = [f"{type(self).__name__} on {self.task} (n={self.n}):"]
        for c in self.conditions:
            lo, hi = self.interval(c)
            lines.append(f"  {c:<{width}}  {self.accuracy(c):.3f}  [{lo:.3f}, {hi:.3f}]")
        return "\n".join(lines)

    def __repr__(self) -> str:
        accs = " ".join(f"{c}={a:.2f}" for c, a in self.accuracies.items())
        return f"{type(self).__name__}({self.task!r} n={self.n}: {accs})"
