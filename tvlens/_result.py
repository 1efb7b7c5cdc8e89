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
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch

from tvlens.errors import CheckpointError

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
        """Write :meth:`to_json` to ``path`` (written to a temporary file, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

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
