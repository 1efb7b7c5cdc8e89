"""The analysis registry: one declaration per analysis, read by the CLI, the report and the circuit.

Context:
    An analysis module ends with ``register(Analysis(...))``: its name, a frozen options
    dataclass (subclass :class:`Options`: typed fields, ``Literal`` choices, a one-line ``help``
    in each field's metadata, validated on construction), the function ``run(ctx, options)`` that
    returns its result(s), and its result class. From that declaration come

    - ``tvlens analyze NAME``: the common inputs (``--model --task --template --vector --layer
      --n --seed --html``) plus one option per field of the options dataclass
      (:func:`option_specs`); the CLI parses, calls ``run`` and prints ``result.payload()`` /
      ``result.text()``;
    - the report's section (key ``NAME``, ``title``, ``group``, ``description``), run with the
      default options;
    - for per-head results, the circuit's columns (``head_columns(result) -> {name: [layer, head]}``)
      and, for every analysis, ``Circuit.analysis(NAME)``.

    Every public module of :mod:`tvlens.analysis` is imported by :func:`analyses`, so a new
    analysis is one new file (its declaration included) plus its test.

    :class:`Context` is what ``run`` gets: the model, the task, the vector (given, or an LTV trained
    once at ``layer``), the zero-shot test prompts, the split seed (the vector's own when it has
    one), the key heads, and caches shared by the analyses of one report, CLI call or circuit.

>>> from dataclasses import dataclass, field
>>> from typing import Literal
>>> from tvlens.analysis._registry import Options, option_specs
>>> @dataclass(frozen=True)
... class Demo(Options):
...     kind: Literal["zero", "mean"] = field(default="zero", metadata={"help": "how to ablate"})
...     top: int = field(default=3, metadata={"help": "heads", "min": 1})
>>> [(s.flag, s.choices) for s in option_specs(Demo)]
[('--kind', ('zero', 'mean')), ('--top', None)]
>>> Demo(kind="gaussian")
Traceback (most recent call last):
...
tvlens.errors.ConfigError: Demo: kind must be one of ['zero', 'mean'], got 'gaussian'
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import logging
import pkgutil
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tvlens._memo import Memo
from tvlens.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Analysis", "Context", "GROUPS", "OptionSpec", "Options", "analyses", "as_results", "default_layers", "get",
           "lens_layers", "option_specs", "register", "register_view", "view"]

GROUPS = ("Baselines", "Heads", "Logit lens and linearity", "Geometry")
COMMON = ("model", "task", "template", "vector", "layer", "n", "seed", "html", "json", "debug")  # the CLI's own inputs


# --- options -------------------------------------------------------------------------------------


class Options:
    """Base of an analysis's frozen options dataclass: every field is checked against its type on construction.

    Supported field types: ``int``, ``float``, ``str``, ``bool``, ``Literal[...]``, ``X | None`` and
    ``tuple[X, ...]`` of those. Metadata: ``help`` (one line), ``min`` / ``max`` for numbers (inclusive;
    ``min_exclusive=True`` makes the lower bound exclusive). A tuple field must not be empty.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            _check_value(type(self).__name__, f, hints[f.name], value)


def _check_value(owner: str, f: dataclasses.Field, hint, value) -> None:
    base, optional, many = _unwrap(hint)
    if value is None:
        if not optional:
            raise ConfigError(f"{owner}: {f.name} must be given (got None)")
        return
    items = value if many else (value,)
    if many and not isinstance(value, tuple):
        raise ConfigError(f"{owner}: {f.name} must be a tuple, got {type(value).__name__} {value!r}")
    if many and not value:
        from tvlens.errors import DegenerateInputError

        raise DegenerateInputError(f"{owner}: {f.name} is empty; give at least one value (or leave the default)")
    for v in items:
        if typing.get_origin(base) is Literal:
            if v not in typing.get_args(base):
                raise ConfigError(f"{owner}: {f.name} must be one of {list(typing.get_args(base))}, got {v!r}")
            continue
        ok = (isinstance(v, bool) if base is bool else
              isinstance(v, (int, float)) and not isinstance(v, bool) if base is float else
              isinstance(v, int) and not isinstance(v, bool) if base is int else isinstance(v, base))
        if not ok:
            raise ConfigError(f"{owner}: {f.name} must be {base.__name__}, got {type(v).__name__} {v!r}")
        if base is float and not math.isfinite(v):
            raise ConfigError(f"{owner}: {f.name} must be a finite number, got {v!r}")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        open_lo = bool(f.metadata.get("min_exclusive"))  # (lo, hi]: e.g. a share of heads, of which 0 would pick none
        if (lo is not None and (v <= lo if open_lo else v < lo)) or (hi is not None and v > hi):
            raise ConfigError(f"{owner}: {f.name} must lie in {'(' if open_lo else '['}{lo}, {hi}], got {v!r}")


def _unwrap(hint) -> tuple[Any, bool, bool]:
    """(element type, may be None, is a tuple[X, ...]) of a field's type."""
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise ConfigError(f"unsupported option type {hint!r}: one type or None")
        hint = rest[0]
    many = typing.get_origin(hint) is tuple
    if many:
        inner = typing.get_args(hint)
        if len(inner) != 2 or inner[1] is not Ellipsis:
            raise ConfigError(f"unsupported option type {hint!r}: write tuple[X, ...]")
        hint = inner[0]
    if typing.get_origin(hint) is not Literal and hint not in (int, float, str, bool):
        raise ConfigError(f"unsupported option type {hint!r}: int, float, str, bool, Literal, X | None, tuple[X, ...]")
    return hint, optional, many


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option of an options field (what :mod:`argparse` needs)."""

    name: str  # the field
    flag: str  # --field-name
    type: Any  # int, float, str or bool
    choices: tuple | None
    nargs: str | None  # "+" for tuple fields
    default: Any
    help: str


def option_specs(options: type) -> list[OptionSpec]:
    """The command-line options of an :class:`Options` dataclass, one per field."""
    if not (dataclasses.is_dataclass(options) and issubclass(options, Options)):
        raise ConfigError(f"{options!r} is not an Options dataclass; declare @dataclass(frozen=True) class X(Options)")
    hints = typing.get_type_hints(options)
    out = []
    for f in dataclasses.fields(options):
        base, _, many = _unwrap(hints[f.name])
        choices = typing.get_args(base) if typing.get_origin(base) is Literal else None
        kind = type(choices[0]) if choices else base
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(OptionSpec(f.name, "--" + f.name.replace("_", "-"), kind, choices, "+" if many else None, default,
                              f.metadata.get("help", "")))
    return out


# --- the declaration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """One analysis, as the CLI, the report and the circuit see it."""

    name: str  # `tvlens analyze NAME`, the report section's key, Circuit.analysis(NAME)
    options: type  # an Options dataclass; every field has a default
    run: Callable[[Context, Any], Any]  # run(ctx, options) -> a Result or a sequence of Results
    result: type  # the result class run returns (each of them, for a sequence)
    title: str  # the report section's title
    group: str = "Heads"  # the report group (one of GROUPS)
    description: str = ""  # the report section's one-paragraph description; the CLI's help
    order: int = 100  # place within its report group (lower first)
    head_columns: Callable[[Any], dict] | None = None  # per-head results: {column: tensor [layer, head]} for Circuit.heads()
    cli: bool = True  # generate `tvlens analyze NAME` (False: a hand-written subcommand of that name stands)
    report: bool = True  # a section of the report

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"analysis name {self.name!r}: letters, digits, - and _ only")
        if self.group not in GROUPS:
            raise ConfigError(f"analysis {self.name!r}: group must be one of {GROUPS}, got {self.group!r}")
        specs = option_specs(self.options)
        clash = [s.name for s in specs if s.name in COMMON]
        if clash:
            raise ConfigError(f"analysis {self.name!r}: option fields {clash} clash with the CLI's common inputs {COMMON}")
        try:
            self.options()
        except TypeError:
            raise ConfigError(f"analysis {self.name!r}: every field of {self.options.__name__} needs a default") from None


_ANALYSES: dict[str, Analysis] = {}
_LOADED: list[bool] = []


def register(analysis: Analysis, *, overwrite: bool = False) -> Analysis:
    """Add ``analysis`` (at the end of its module); a second one of the same name raises unless ``overwrite``."""
    old = _ANALYSES.get(analysis.name)
    if old is not None and not overwrite and old.run is not analysis.run:
        raise ConfigError(f"an analysis named {analysis.name!r} is registered already; choose another name or pass overwrite=True")
    _ANALYSES[analysis.name] = analysis
    return analysis


def unregister(name: str) -> None:
    """Remove an analysis (for tests that register their own)."""
    _ANALYSES.pop(name, None)


def _load() -> None:
    """Import every public module of :mod:`tvlens.analysis` (each registers its analyses)."""
    if _LOADED:
        return
    from pathlib import Path

    package = __name__.rpartition(".")[0]  # tvlens.analysis: found by path, so this module never imports its package
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    _LOADED.append(True)


def analyses() -> list[Analysis]:
    """Every registered analysis, in report order (group, then ``order``, then name)."""
    _load()
    return sorted(_ANALYSES.values(), key=lambda a: (GROUPS.index(a.group), a.order, a.name))


def get(name: str) -> Analysis:
    _load()
    if name not in _ANALYSES:
        raise ConfigError(f"no analysis named {name!r}; the analyses are {[a.name for a in analyses()]}")
    return _ANALYSES[name]


def as_results(out) -> tuple:
    """``run``'s return value as a tuple of results."""
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


# --- views: renderers that live above the analyses ------------------------------------------------

VIEWS_PACKAGE = "tvlens.viz"  # the views layer; importing it registers every renderer (register_view)
_VIEWS: dict[str, Callable] = {}


def register_view(name: str, render: Callable) -> None:
    """Called by a module of :mod:`tvlens.viz` at import: ``render`` draws the analysis results of view ``name``."""
    _VIEWS[name] = render


def view(name: str) -> Callable:
    """The renderer registered as ``name`` (e.g. ``"dashboard"`` for :meth:`Circuit.dashboard`).

    The analyses never import the views (they sit above them, tests/test_layering.py); the views
    register themselves, and on first use the views package is loaded by its name, the one
    plugin point of this layer.
    """
    if name not in _VIEWS:
        importlib.import_module(VIEWS_PACKAGE)
    if name not in _VIEWS:
        raise ConfigError(f"no view named {name!r} is registered; the views are {sorted(_VIEWS)} "
                          f"(a module of {VIEWS_PACKAGE} calls register_view)")
    return _VIEWS[name]


# --- what run() gets -----------------------------------------------------------------------------


def default_layers(n_layers: int) -> list[int]:
    """The layers of per-layer analyses, for the CLI and the report alike: all on a model of <= 8 layers, else every third."""
    return list(range(n_layers)) if n_layers <= 8 else list(range(0, n_layers, 3))


def lens_layers(n_layers: int) -> list[int]:
    """The early and late LTV layers of the logit lens: L/4 and 3L/4."""
    return sorted({max(n_layers // 4, 0), min(3 * n_layers // 4, n_layers - 1)})


@dataclass
class Context(Memo):
    """Inputs of an analysis run, computed once and shared (model, task, vector, prompts, key heads).

    ``vector``: a given vector (its split seed, when it has one, wins over ``seed``); otherwise
    :attr:`vector` trains an LTV at ``layer`` (last position, default config) on first use.
    ``prompts``: given zero-shot prompts; otherwise the first ``n`` zero-shot test queries.
    """

    model: Any
    model_name: str
    task: Any  # tv.tasks.Task
    layer: int | None  # the LTV's layer (None: the middle layer, n_layers // 2)
    seed: int = 0
    n: int | None = None  # test queries per analysis (None: the whole test split)
    given_vector: Any = None  # a TaskVector to analyse instead of training one
    given_prompts: Any = None  # a PromptSet to use instead of the test split
    fraction: float = 0.1  # share of heads called key heads
    progress: bool = False  # a tqdm bar while training the LTV
    cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from tvlens._validate import check_layer

        self.layer = check_layer(self.layer, int(self.model.cfg.n_layers))
        v = self.given_vector
        if v is not None:
            self.layer = min(s.layer for s in v.sites)
            if "split_seed" in v.meta:  # the one way to choose the split seed: the vector's own
                self.seed = int(v.meta["split_seed"])

    @property
    def toy(self) -> bool:
        return getattr(self.model.cfg, "model_name", "") == "tvlens-toy"

    @property
    def ltv(self):
        """The LTV training result at :attr:`layer` (raises for a given vector: it was not trained here)."""
        if self.given_vector is not None:
            raise ConfigError("this context analyses a given vector; no LTV was trained here (drop --vector to train one)")
        from tvlens.ltv import LTVConfig, train_ltv

        return self.once("ltv", lambda: train_ltv(self.model, self.task, layers=self.layer, config=LTVConfig(seed=self.seed),
                                                   splits=self.splits, progress=self.progress))

    @property
    def vector(self):
        return self.given_vector if self.given_vector is not None else self.ltv.vector

    def vector_origin(self, path: str | None = None) -> dict:
        """Where :attr:`vector` came from: the given file's ``path``, or the LTV trained here (validation accuracy, seconds)."""
        if self.given_vector is not None:
            return {"path": path}
        return {"trained": True, "val_accuracy": self.ltv.val_accuracy, "train_seconds": round(self.ltv.seconds, 2)}

    @property
    def splits(self):
        from tvlens.prompts import make_splits

        return self.once("splits", lambda: make_splits(self.task, seed=self.seed))

    @property
    def prompts(self):
        """Zero-shot test prompts (the first :attr:`n`), or the given ones."""
        if self.given_prompts is not None:
            return self.given_prompts
        from tvlens.prompts import make_prompts

        return make_prompts(self.splits, "test", k=0, seed=self.seed, n=self.n)

    def layers(self) -> list[int]:
        """The layers of per-layer analyses (:func:`default_layers`)."""
        return default_layers(self.model.cfg.n_layers)

    def ltv_at(self, layer: int):
        """The LTV at ``layer`` (last position, default config), trained once; :attr:`layer`'s is :attr:`vector`."""
        if layer == self.layer:
            return self.vector
        from tvlens.ltv import LTVConfig, train_ltv

        return self.once(("ltv_at", layer), lambda: train_ltv(self.model, self.task, layers=layer, config=LTVConfig(seed=self.seed),
                                                               splits=self.splits, progress=False).vector)

    def vectors_by_layer(self, layers: Sequence[int] | None = None) -> dict[int, Any]:
        """One LTV per layer of ``layers`` (default :meth:`layers`)."""
        return {layer: self.ltv_at(layer) for layer in (self.layers() if layers is None else layers)}

    def saliency(self):
        """One-pass gradient saliency of every head that reads :attr:`vector` (computed once)."""
        spec = get("saliency")  # through the registry: saliency.py imports this module
        return self.once("saliency", lambda: spec.run(self, spec.options()))

    def key_heads(self, fraction: float | None = None) -> list[tuple[int, int]]:
        """The top ``fraction`` (default :attr:`fraction`) of heads by saliency, most salient first."""
        return list(self.saliency().top(self.fraction if fraction is None else fraction))
