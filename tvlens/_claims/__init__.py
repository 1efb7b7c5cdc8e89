"""Every claim of the paper, re-measured on one model: one row per claim with its verdict.

Context:
    ``tv.claims(model, tasks)`` runs the analyses each claim needs (once each: the sweep, the
    six-scenario comparison, the registered analyses on the first task's LTV at ``layer``) and
    returns a :class:`ClaimsResult`: per claim the paper's figure, the measured value with its
    95% interval, the verdict (``holds``, ``fails`` or ``not testable``, with the reason), the
    tasks and layers used, and the one command that reproduces the row. The verdict rules and
    their thresholds are in :mod:`tvlens._claims._verdict`; the claims in
    :mod:`tvlens._claims._catalog`.

>>> import tvlens as tv
>>> res = tv.claims(tv.load_model("toy"), only=["one_pass_saliency"], progress=False)
>>> row = res.rows[0]
>>> row["claim"], row["verdict"] in ("holds", "fails", "not testable")
('One-pass gradient saliency ranks heads like exact ablation', True)
"""

from __future__ import annotations

import html
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tvlens._result import Result
from tvlens._claims._catalog import CLAIMS, Claim, Measurement
from tvlens._claims._context import ClaimsContext, default_tasks
from tvlens._claims._verdict import THRESHOLDS, UNTESTABLE
from tvlens.errors import ConfigError, TvlensError

log = logging.getLogger(__name__)

__all__ = ["CLAIMS", "THRESHOLDS", "Claim", "ClaimsContext", "ClaimsResult", "Measurement", "claim_keys", "claims", "evaluate"]


@dataclass(frozen=True, eq=False, repr=False)
class ClaimsResult(Result):
    """One row per claim: key, claim, paper, measured, interval, verdict, reason, detail, tasks, layers, command, source."""

    model: str
    rows: tuple[dict, ...]
    seconds: float

    def __repr__(self) -> str:
        counts = {v: sum(r["verdict"] == v for r in self.rows) for v in ("holds", "fails", "not testable")}
        return f"ClaimsResult({self.model!r}, {len(self.rows)} claims: {counts})"

    def to_frame(self):
        import pandas as pd

        df = pd.DataFrame([{**r, "tasks": " ".join(r["tasks"]), "layers": " ".join(map(str, r["layers"])),
                            "interval": None if r["interval"] is None else f"[{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]"}
                           for r in self.rows])
        return df

    def payload(self) -> dict:
        """The JSON of ``tvlens claims --json``."""
        keep = ("key", "claim", "paper", "measured", "interval", "verdict", "reason", "detail", "numbers", "tasks", "layers",
                "command", "source")
        return {"model": self.model, "seconds": self.seconds,
                "claims": [{k: (list(r[k]) if isinstance(r[k], tuple) else r[k]) for k in keep} for r in self.rows]}

    def text(self) -> str:
        width = max(len(r["key"]) for r in self.rows) if self.rows else 10
        lines = [f"claims of arXiv 2509.24169 on {self.model} ({self.seconds:.0f} s)"]
        for r in self.rows:
            value = "" if r["measured"] is None else f"{r['measured']:+.3f}"
            ci = "" if r["interval"] is None else f" [{r['interval'][0]:+.2f}, {r['interval'][1]:+.2f}]"
            lines.append(f"  {r['key']:<{width}}  {r['verdict']:<12}  {value}{ci}  {r['reason']}")
        return "\n".join(lines)

    def plot(self):
        """The table as a figure: one row per claim, coloured by verdict."""
        import plotly.graph_objects as go

        colour = {"holds": "#d8f0d8", "fails": "#f6d6d6", "not testable": "#eeeeee"}
        df = self.to_frame()
        fill = [[colour[v] for v in df["verdict"]]] * 6
        fig = go.Figure(go.Table(header={"values": ["claim", "paper", "measured", "95% interval", "verdict", "reason"]},
                                 cells={"values": [df["claim"], df["paper"],
                                                   [None if m is None or (isinstance(m, float) and math.isnan(m)) else round(m, 3)
                                                    for m in df["measured"]], df["interval"], df["verdict"], df["reason"]],
                                        "fill_color": fill, "align": "left"}))
        fig.update_layout(title=f"The paper's claims on {self.model}", height=120 + 60 * len(self.rows))
        return fig

    def to_html(self) -> str:
        """A self-contained page (no script): the table, every cell escaped."""
        head = "".join(f"<th>{h}</th>" for h in ("claim", "paper", "measured", "95% interval", "verdict", "reason", "command"))
        body = []
        for r in self.rows:
            value = "" if r["measured"] is None else f"{r['measured']:+.3f}"
            ci = "" if r["interval"] is None else f"[{r['interval'][0]:+.2f}, {r['interval'][1]:+.2f}]"
            cells = (r["claim"], r["paper"], value, ci, r["verdict"], f"{r['reason']}. {r['detail']}", r["command"])
            body.append(f"<tr class=\"{r['verdict'].replace(' ', '-')}\">" +
                        "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
                 "padding:4px 8px;vertical-align:top;text-align:left}.holds td{background:#e6f4e6}.fails td{background:#f8e2e2}"
                 ".not-testable td{background:#f0f0f0}td:last-child{font-family:monospace;font-size:85%}")
        return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Claims on {html.escape(self.model)}</title>"
                f"<style>{style}</style></head><body><h1>The paper's claims on {html.escape(self.model)}</h1>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></body></html>")

    def write_html(self, path) -> str:
        from tvlens._io import atomic_write

        text = self.to_html()
        return str(atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8")))


def _command(model_name: str, tasks: Sequence[str], key: str, layer: int, default_layer: int, seed: int, n: int | None) -> str:
    parts = [f"tvlens claims --model {model_name} --tasks {' '.join(tasks)} --only {key}"]
    if layer != default_layer:
        parts.append(f"--layer {layer}")
    if seed:
        parts.append(f"--seed {seed}")
    if n is not None:
        parts.append(f"--n {n}")
    return " ".join(parts) + " --json"


def claim_keys(only: Sequence[str] | None = None) -> list[str]:
    """The claim keys ``only`` names (None: all of :data:`CLAIMS`), in order, without repeats; a ConfigError
    names any unknown key and the known ones."""
    keys = list(CLAIMS) if only is None else list(dict.fromkeys(only))
    unknown = [k for k in keys if k not in CLAIMS]
    if unknown or not keys:
        raise ConfigError(f"unknown claims {unknown}; choose from {list(CLAIMS)}" if unknown else "only= names no claim")
    return keys


def claims(model, tasks: Sequence | None = None, *, model_name: str | None = None, layer: int | None = None,
           only: Sequence[str] | None = None, seed: int = 0, n: int | None = None, progress: bool = True,
           executor=None, spec: str | None = None) -> ClaimsResult:
    """Every claim of :data:`CLAIMS` (or ``only`` those keys) on ``model``: a :class:`ClaimsResult`.

    ``tasks``: names or Task objects (default :func:`~tvlens._claims._context.default_tasks`); the first one is the
    task of the per-head, lens and geometry claims, every one enters the sweep and comparison claims. ``layer``:
    the LTV layer of the per-head claims (default: the middle layer). ``n``: test queries per analysis.
    ``executor`` (``"local"``/``"ray"``/an Executor) with the model's ``spec`` string trains the sweeps' and the
    comparison's LTVs as parallel jobs (the same vectors, :mod:`tvlens._executor`).
    """
    from tvlens.tasks import get as get_task

    t0 = time.perf_counter()
    names = list(tasks) if tasks is not None else list(default_tasks(model))
    if not names:
        raise ConfigError("claims needs at least one task; pass tasks=['toy/antonym'] or leave tasks=None for the defaults")
    task_objs = tuple(get_task(t) if isinstance(t, str) else t for t in names)
    from tvlens._validate import check_layer

    keys = claim_keys(only)
    layer = check_layer(layer, int(model.cfg.n_layers))
    name = model_name or getattr(model.cfg, "model_name", "model")
    if name == "tvlens-toy":
        name = "toy"
    cc = ClaimsContext(model, name, task_objs, layer, seed=seed, n=n, executor=executor, spec=spec)
    return evaluate(cc, keys, progress=progress, t0=t0)


def evaluate(cc: ClaimsContext, keys: Sequence[str] | None = None, *, progress: bool = False, t0: float | None = None) -> ClaimsResult:
    """The claims ``keys`` (default: all) measured on a :class:`ClaimsContext`, reusing whatever its caches hold.

    The report calls this with the context its own sections read, so each analysis runs once for both.
    """
    from tvlens import _progress

    t0 = time.perf_counter() if t0 is None else t0
    keys = list(CLAIMS) if keys is None else list(keys)
    rows = []
    bar = _progress.bar(keys, desc="claims", disable=not progress)
    for key in bar:
        bar.set_postfix_str(key)
        spec = CLAIMS[key]
        t = time.perf_counter()
        try:
            m = spec.measure(cc)
            verdict, reason = spec.judge(m.numbers)
        except TvlensError as e:  # an analysis that cannot run here: the row says so, the others go on
            log.warning("claim %s: %s", key, e)
            m = Measurement({}, None, None, tuple(x.name for x in cc.tasks), ())
            verdict, reason = UNTESTABLE, f"{type(e).__name__}: {e}"
        value = None if m.value is None or (isinstance(m.value, float) and math.isnan(m.value)) else float(m.value)
        rows.append({"key": key, "claim": spec.claim, "paper": spec.paper, "measured": value,
                     "interval": None if m.interval is None else (float(m.interval[0]), float(m.interval[1])),
                     "verdict": verdict, "reason": reason, "detail": m.detail, "numbers": dict(m.numbers), "tasks": tuple(m.tasks),
                     "layers": tuple(int(x) for x in m.layers),
                     "command": _command(cc.model_name, [x.name for x in cc.tasks], key, cc.layer, cc.n_layers // 2, cc.seed, cc.n),
                     "source": spec.analysis.format(model=cc.model_name, task=cc.tasks[0].name, layer=cc.layer,
                                                    tasks=" ".join(x.name for x in cc.tasks)),
                     "seconds": time.perf_counter() - t})
        log.info("claim %s: %s (%.1f s)", key, verdict, rows[-1]["seconds"])
    return ClaimsResult(cc.model_name, tuple(rows), time.perf_counter() - t0)
