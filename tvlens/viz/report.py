"""The report: one offline HTML page with every analysis of a task vector for one task.

Context:
    A researcher attaches this page to a paper draft: baselines (ICL, the LTV's training, the
    layer sweep, the six-scenario comparison), which heads carry the vector (OV products,
    saliency, ablations, attention sinks), how it becomes an answer (logit lens, decoded tokens,
    linear propagation, rotation vs stretch) and how it relates to other tasks' vectors
    (cosines, transfer, composition), each as a section with its plot and its table, under a
    table of contents. plotly.js is inlined once; the page fetches nothing.

    Sections come from a registry (:data:`SECTIONS`): a builder takes the shared
    :class:`ReportContext` (model, task, the LTV at the report's layer, trained once) and returns
    result objects (anything with ``.plot()`` and ``.to_frame()``, e.g. every tvlens
    :class:`~tvlens._result.Result`). :func:`register_section` adds one. A builder that fails, or
    whose analysis is not in this tvlens, gives a section that says so; the rest still render.

>>> import tvlens as tv
>>> from tvlens.viz.report import build_report
>>> rep = build_report(tv.load_model("toy"), "toy/antonym", sections=["icl", "ltv"], progress=False)
>>> [s.key for s in rep.sections], all(s.ok for s in rep.sections)
(['icl', 'ltv'], True)
"""

from __future__ import annotations

import html
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvlens._result import Result
from tvlens.analysis import GROUPS, analyses
from tvlens.analysis import AnalysisContext as Context
from tvlens.errors import ConfigError

log = logging.getLogger(__name__)

MAX_ROWS = 60  # table rows shown per result (the rest are counted)
OPEN_ROWS = 20  # tables up to this many rows are shown unfolded


ReportContext = Context  # what every section builder gets (tvlens.analysis._registry.Context)

Builder = Callable[[ReportContext], Sequence[Any]]


@dataclass(frozen=True)
class SectionSpec:
    key: str
    title: str
    group: str
    build: Builder
    description: str = ""


SECTIONS: dict[str, SectionSpec] = {}


def register_section(key: str, title: str, group: str, build: Builder, description: str = "", *, overwrite: bool = False) -> None:
    """Add a section: ``build(ctx)`` returns results (each with ``.plot()`` and ``.to_frame()``)."""
    if key in SECTIONS and not overwrite:
        raise ConfigError(f"report section {key!r} exists; pass overwrite=True to replace it")
    if group not in GROUPS:
        raise ConfigError(f"group must be one of {GROUPS}, got {group!r}")
    SECTIONS[key] = SectionSpec(key, title, group, build, description)


@dataclass(frozen=True, eq=False)
class ReportSection:
    key: str
    title: str
    group: str
    description: str
    results: tuple  # result objects
    seconds: float
    error: str | None = None  # why the section is empty ("not in this tvlens: ...", or the failure)
    # the earlier sections whose cached results this one took, in report order, each with the seconds those results
    # took to compute there (part of that section's seconds, not of this one's)
    reused_from: tuple[tuple[str, float], ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def reused_seconds(self) -> float:
        """Seconds that earlier sections spent computing the results this section reused."""
        return round(sum((s for _, s in self.reused_from), 0.0), 2)


@dataclass(frozen=True, eq=False, repr=False)
class Report(Result):
    """The report's sections; :meth:`write` renders the page."""

    model: str
    fingerprint: str
    task: str
    layer: int
    sections: tuple[ReportSection, ...]

    def to_frame(self):
        """One row per section: key, title, group, results, seconds, error, reused_seconds and reused_from
        (``{earlier section: seconds}``, see :attr:`ReportSection.reused_from`)."""
        import pandas as pd

        df = pd.DataFrame([{"key": s.key, "title": s.title, "group": s.group, "results": len(s.results),
                            "seconds": s.seconds} for s in self.sections])
        df["error"] = pd.Series([s.error for s in self.sections], dtype=object)  # None stays None (not NaN)
        df["reused_seconds"] = [s.reused_seconds for s in self.sections]
        df["reused_from"] = pd.Series([dict(s.reused_from) for s in self.sections], dtype=object)
        return df

    def to_dict(self) -> dict:
        raise ConfigError("a Report holds live result objects and is not saved as JSON; save its page with .write(path), "
                          "or each section's results with their own .save(path)")

    def __repr__(self) -> str:
        bad = [s.key for s in self.sections if not s.ok]
        return (f"Report({self.task!r} on {self.model}, layer {self.layer}: {len(self.sections)} sections"
                + (f", empty: {bad})" if bad else ")"))

    def to_html(self) -> str:
        return render(self)

    def write(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write the self-contained page to ``path`` (atomically)."""
        from tvlens._io import atomic_write
        from tvlens._validate import check_output_path

        check_output_path(path, "report path")
        text = render(self)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite)


def build_report(model, task, *, model_name: str | None = None, layer: int | None = None, sections: Sequence[str] | None = None,
                 skip: Sequence[str] = (), seed: int = 0, n: int | None = None, progress: bool = True,
                 executor=None, spec: str | None = None) -> Report:
    """Run the report's sections (default: all of :data:`SECTIONS` minus ``skip``) for ``task``.

    ``layer``: the LTV's layer (default: the middle layer). ``n``: test queries per analysis.
    ``executor`` (``"local"``/``"ray"``/an Executor) with the model's ``spec`` string (e.g. ``"smollm2"``) trains
    the sweep's and the comparison's LTVs as parallel jobs (the same vectors, :mod:`tvlens._executor`).

    Sections share one compute-once cache, so a section's ``seconds`` leave out the results it took from an earlier
    section; its ``reused_from`` names that section with the seconds those results took there.
    """
    import tvlens as tv
    from tvlens import _progress
    from tvlens._memo import record
    from tvlens.analysis.geometry import resolve_task

    _register_builtin()
    keys = list(sections) if sections is not None else list(SECTIONS)
    unknown = [k for k in [*keys, *skip] if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown report section(s) {unknown}; the sections are {list(SECTIONS)}")
    keys = [k for k in keys if k not in skip]
    task = resolve_task(model, task)
    name = model_name or getattr(model.cfg, "model_name", "model")
    ctx = _shared_context(model, "toy" if name == "tvlens-toy" else name, task, layer, seed, n, executor, spec)
    out, starts = [], []  # starts: where each section's cache use begins in the recording
    bar = _progress.bar(keys, desc="report", disable=not progress)
    with record() as rec:
        for key in bar:
            bar.set_postfix_str(key)
            spec = SECTIONS[key]
            starts.append(len(rec))
            t0 = time.perf_counter()
            try:
                results, error = tuple(spec.build(ctx)), None
            except _Unavailable as e:
                results, error = (), f"not in this tvlens: {e}"
            except Exception as e:  # one failing analysis must not cost the researcher the whole page
                log.warning("report section %s failed: %s: %s", key, type(e).__name__, e)
                results, error = (), f"{type(e).__name__}: {e}"
            seconds = round(time.perf_counter() - t0, 2)
            reused = _by_section(rec.reused(starts[-1]), starts, [s.key for s in out])
            out.append(ReportSection(key, spec.title, spec.group, spec.description, results, seconds, error, reused))
    return Report(name, tv.fingerprint(model), task.name, ctx.layer, tuple(out))


def _by_section(reused: dict[int, float], starts: list[int], keys: list[str]) -> tuple[tuple[str, float], ...]:
    """The seconds of reused cache entries ({index in the recording: seconds}) summed by the earlier section that computed
    them (the last of ``starts`` at or before the index; ``keys``: the earlier sections), in report order; sums under
    0.005 s are left out."""
    import bisect

    total = [0.0] * len(keys)
    for i, seconds in reused.items():
        total[bisect.bisect_right(starts, i) - 1] += seconds
    return tuple((k, round(t, 2)) for k, t in zip(keys, total) if round(t, 2) > 0)


def write_report(model, task, path: str | os.PathLike, **options) -> Report:
    """:func:`build_report` then :meth:`Report.write`; returns the report."""
    from tvlens._validate import check_output_path

    check_output_path(path, "report path")  # before any section runs
    rep = build_report(model, task, **options)
    rep.write(path)
    return rep


# --- rendering -------------------------------------------------------------------------------

_STYLE = """
body{font-family:sans-serif;margin:0;display:flex} nav{position:sticky;top:0;height:100vh;overflow:auto;
min-width:15em;max-width:18em;padding:1em;background:#f6f6f6;border-right:1px solid #ddd;font-size:90%}
nav a{text-decoration:none} nav ul{padding-left:1.2em} main{padding:1em 2em;min-width:0;flex:1}
table{border-collapse:collapse;font-size:85%} td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
section{border-top:2px solid #ddd;margin-top:1.5em} details{overflow-x:auto;max-width:100%} .note{color:#a33} .meta{color:#555} .desc{color:#333;max-width:60em}
"""


def _fmt(x) -> str:
    return f"{x:.3f}"


def _figure_html(fig, first: bool) -> str:
    fig.update_layout(autosize=True)
    return fig.to_html(full_html=False, include_plotlyjs=True if first else False, default_width="100%",
                       config={"displaylogo": False})


def _seconds_note(s: ReportSection) -> str:
    """The section's seconds, and where the results it reused were computed (their seconds count there)."""
    if not s.reused_from:
        return f"{s.seconds:.1f} s"
    whose = "that section's" if len(s.reused_from) == 1 else "its"
    by = [f'the <a href="#{html.escape(k)}">{html.escape(k)}</a> section ({t:.{1 if t >= 0.1 else 2}f} s of {whose} time)'
          for k, t in s.reused_from]  # under 0.1 s: two decimals, so that no named section shows "0.0 s"
    return (f"{s.seconds:.1f} s here; results it reused were computed earlier by "
            + (by[0] if len(by) == 1 else ", ".join(by[:-1]) + " and " + by[-1]) + " and counted there")


def render(report: Report) -> str:
    """The page's HTML: a table of contents by group, then one section per report section."""
    import tvlens as tv

    toc, body, first = [], [], True
    for group in GROUPS:
        secs = [s for s in report.sections if s.group == group]
        if not secs:
            continue
        toc.append(f"<li>{html.escape(group)}<ul>" + "".join(
            f'<li><a href="#{s.key}">{html.escape(s.title)}</a>{"" if s.ok else " (empty)"}</li>' for s in secs) + "</ul></li>")
        body.append(f"<h2>{html.escape(group)}</h2>")
        for s in secs:
            parts = [f'<section id="{s.key}" data-section="{s.key}"><h3>{html.escape(s.title)}</h3>']
            if s.description:
                parts.append(f'<p class="desc">{html.escape(s.description)}</p>')
            if s.error:
                parts.append(f'<p class="note">This section is empty: {html.escape(s.error)}</p>')
            for r in s.results:
                parts.append(f'<h4><code>{html.escape(repr(r))}</code></h4>')
                try:
                    parts.append(_figure_html(r.plot(), first))
                    first = False
                except Exception as e:  # a result without a plot still gets its table
                    parts.append(f'<p class="note">no plot ({html.escape(type(e).__name__)}: {html.escape(str(e))})</p>')
                try:
                    df = r.to_frame()
                    more = f"<p>{len(df)} rows; first {MAX_ROWS} shown</p>" if len(df) > MAX_ROWS else ""
                    opened = " open" if len(df) <= OPEN_ROWS else ""  # long tables start folded
                    parts.append(f"<details{opened}><summary>table ({len(df)} rows)</summary>"
                                 + df.head(MAX_ROWS).to_html(float_format=_fmt, na_rep="-", index=False) + more + "</details>")
                except Exception as e:
                    parts.append(f'<p class="note">no table ({html.escape(type(e).__name__)})</p>')
            parts.append(f'<p class="meta">{_seconds_note(s)}</p></section>')
            body.append("\n".join(parts))
    title = f"tvlens report: {report.task} on {report.model}"
    meta = (f"model {html.escape(report.model)} ({html.escape(report.fingerprint)}), task {html.escape(report.task)}, "
            f"LTV at layer {report.layer}, last position; tvlens {tv.__version__}; built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><nav><b>Contents</b><ul>{''.join(toc)}</ul></nav><main><h1>{html.escape(title)}</h1>"
            f"<p class=\"meta\">{meta}</p>\n" + "\n".join(body) + "\n</main></body></html>\n")


# --- the built-in sections -------------------------------------------------------------------


class _Unavailable(Exception):
    """The analysis a section needs is not in this tvlens (a branch not merged yet)."""


def _icl(ctx: ReportContext):
    import tvlens as tv

    return [tv.icl_baselines(ctx.model, [ctx.task], shots=(0, 1, 2, 4, 8) if ctx.toy else (0, 1, 5), seed=ctx.seed)]


def _ltv(ctx: ReportContext):
    return [ctx.ltv]


def _sweep(ctx: ReportContext):
    return [ctx.cache["claims"].sweep(ctx.task)]  # the claims' sweep (Figure 2), run once for both


def _compare(ctx: ReportContext):
    return [ctx.cache["claims"].compare()]


def _shared_context(model, name: str, task, layer: int | None, seed: int, n: int | None, executor=None,
                    spec: str | None = None) -> ReportContext:
    """The report's context: the claims' analysis context, with the claims context kept in its cache.

    The claims table and the sections read the same LTV, the same registered analyses (with the claims'
    key-head share, at least 3 heads), the same sweep and the same comparison: each is computed once.
    """
    from tvlens._claims import ClaimsContext
    from tvlens._validate import check_layer

    layer = check_layer(layer, int(model.cfg.n_layers))
    cc = ClaimsContext(model, name, (task,), layer, seed=seed, n=n, executor=executor, spec=spec)
    ctx = cc.analysis_context()
    ctx.cache["claims"] = cc
    return ctx


def _claims(ctx: ReportContext):
    from tvlens._claims import evaluate

    return [evaluate(ctx.cache["claims"])]


def _analysis_section(spec):
    """A section builder running a registered analysis (the claims' options, shared with the claims table)."""
    return lambda ctx: list(ctx.cache["claims"].analysis(spec.name))


def _register_builtin() -> None:
    if SECTIONS:
        return
    b = "Baselines"
    register_section("claims", "The paper's claims on this model", b, _claims,
                     "One row per claim of the paper: the measured value with its 95% interval and the verdict, "
                     "from the same analyses as the sections below (this task only, at the report's layer).")
    register_section("icl", "Zero-shot and ICL accuracy", b, _icl, "Full-vocabulary accuracy on the test queries by number of demonstrations.")
    register_section("ltv", "The learned task vector", b, _ltv, "Training history of the LTV every other section analyses (report layer, last position).")
    register_section("sweep", "Layer sweep: LTV, Vanilla TV, FV", b, _sweep, "A fresh single-site vector per method and layer (the paper's Figure 2).")
    register_section("compare", "Six scenarios (the paper's Table 1)", b, _compare, "Each method's vector under the paper's six site scenarios.")
    for spec in analyses():  # every registered analysis with a report section, in report order
        if spec.report:
            register_section(spec.name, spec.title, spec.group, _analysis_section(spec), spec.description)
