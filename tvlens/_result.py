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
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls: type[R], text: str) -> R:
        """Rebuild a result from :meth:`to_json` (only tvlens classes are instantiated)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"not a tvlens result: invalid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"not a tvlens result (format {FORMAT!r}); write results with .save(path)")
        klass = cls if data.get("type") == _qualname(cls) else _class(data["type"])  # cls: named by the caller
        if not (isinstance(klass, type) and issubclass(klass, cls)):
            raise CheckpointError(f"the file holds a {data['type']}, not a {cls.__name__}")
        return klass(**{k: _decode(v) for k, v in data["fields"].items()})

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (:func:`tvlens._io.atomic_write`)."""
        from tvlens._io import atomic_write

        text = self.to_json()
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no result file at {str(path)!r}")
        return cls.from_json(path.read_text(encoding="utf-8"))


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


def _encode(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu()
        return {"__tensor__": {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": t.flatten().tolist()}}
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
    if "__tensor__" in v:
        t = v["__tensor__"]
        dtype = getattr(torch, str(t["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"unknown tensor dtype {t['dtype']!r} in a result file")
        return torch.tensor(t["data"], dtype=dtype).reshape([int(n) for n in t["shape"]])
    if "__dataclass__" in v:
        return _class(v["__dataclass__"])(**{k: _decode(x) for k, x in v["fields"].items()})
    if "__tuple__" in v:
        return tuple(_decode(x) for x in v["__tuple__"])
    if "__items__" in v:
        return {_decode(k): _decode(x) for k, x in v["__items__"]}
    return {k: _decode(x) for k, x in v.items()}


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
        if self.correct.shape != (len(self.conditions),):
            raise ConfigError(f"correct must hold one count per condition ({len(self.conditions)}), got shape {tuple(self.correct.shape)}")
        if self.n < 1 or bool((self.correct < 0).any()) or bool((self.correct > self.n).any()):
            raise ConfigError(f"counts must lie in 0..n with n >= 1, got n={self.n}, correct={self.correct.tolist()}")

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
