"""The head-saliency dashboard: one self-contained offline HTML page about which heads carry a vector.

Context:
    The page is built only from frames and tensors (:class:`DashboardData`, defined beside the circuit), which
    :meth:`tvlens.analysis.circuit.Circuit.dashboard_data` fills from the analyses' results. It
    shows the saliency heatmap (layers down, heads across; hover gives score, rank, layer, head,
    sink mass, OV norm and any other column), the key heads marked, and a panel for the selected
    head: clicking a cell (plotly's ``plotly_click`` event, handled by a small inline script)
    draws that head's attention pattern on an example prompt and the tokens its OV output decodes
    to. Below: ablation bars, attention from the last position for key vs random heads, and the
    layers of the key heads. plotly.js is inlined once; the page fetches nothing.

>>> import torch, pandas as pd
>>> from tvlens.viz.heads import DashboardData, render_dashboard
>>> frame = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "saliency": [0.1, 0.4, 0.2, 0.3]})
>>> data = DashboardData("demo", frame, ("<s>", "a", "->"), torch.full((2, 2, 3, 3), 1 / 3),
...                      (("x",),) * 4, torch.ones(2, 2, 1))
>>> page = render_dashboard(data)
>>> "plotly_click" in page and "<script src=" not in page      # clickable, and nothing is fetched
True
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from tvlens.analysis._registry import register_view
from tvlens.analysis.circuit import DashboardData as DashboardData  # the page's data (frames and tensors) sits with the circuit

HOVER_COLUMNS = ("rank", "sink_mass", "ov_norm", "exact_effect", "cos_theta", "label_proj")  # shown on hover when present


@dataclass(frozen=True, eq=False)
class Dashboard:
    """A rendered dashboard: the page's HTML, shown inline in Jupyter, written with :meth:`save`."""

    html: str
    path: Path | None = None

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        from tvlens._io import atomic_write

        return atomic_write(path, lambda tmp: Path(tmp).write_text(self.html, encoding="utf-8"), overwrite=overwrite)

    def _repr_html_(self) -> str:
        # an iframe keeps the page's scripts and styles apart from the notebook's
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;height:1500px;border:0" '
                'sandbox="allow-scripts"></iframe>')

    def __repr__(self) -> str:
        where = f", written to {str(self.path)!r}" if self.path else ""
        return f"Dashboard({len(self.html) / 1e6:.1f} MB of self-contained HTML{where})"


def _grid(frame, column: str, shape: tuple[int, int]) -> list[list[float | None]]:
    out: list[list[float | None]] = [[None] * shape[1] for _ in range(shape[0])]
    if column not in frame.columns:
        return out
    for layer, head, v in zip(frame["layer"], frame["head"], frame[column]):
        out[int(layer)][int(head)] = _num(v)
    return out


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _round(x: float, digits: int) -> float | None:
    return round(x, digits) if math.isfinite(x) else None


def _js(obj) -> str:
    """JSON safe inside a <script> element (no '</script>' or '<!--' can appear in it)."""
    return json.dumps(obj, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _heatmap(data: DashboardData):
    import plotly.graph_objects as go

    frame, shape = data.heads, data.shape
    cols = [c for c in HOVER_COLUMNS if c in frame.columns]
    z = _grid(frame, "saliency", shape)
    grids = [_grid(frame, c, shape) for c in cols]
    custom = [[[g[i][j] for g in grids] for j in range(shape[1])] for i in range(shape[0])]
    hover = "layer %{y}, head %{x}<br>saliency %{z:.4g}" + "".join(
        f"<br>{c.replace('_', ' ')} %{{customdata[{k}]:.4g}}" for k, c in enumerate(cols)) + "<extra></extra>"
    fig = go.Figure(go.Heatmap(z=z, x=list(range(shape[1])), y=list(range(shape[0])), customdata=custom,
                               hovertemplate=hover, colorscale="Viridis", colorbar={"title": "saliency"}))
    if "key" in frame.columns:
        key = frame[frame["key"].astype(bool)]
        fig.add_trace(go.Scatter(x=key["head"].tolist(), y=key["layer"].tolist(), mode="markers", name="key head",
                                 marker={"symbol": "square-open", "size": 14, "color": "red", "line": {"width": 2}},
                                 hoverinfo="skip"))
    first = 0
    if data.injection_layer is not None:
        # earlier layers do not read the vector (blank rows): show one of them, below the dashed line
        first = max(0, data.injection_layer - 1)
        fig.add_hline(y=data.injection_layer - 0.5, line={"color": "black", "dash": "dash"},
                      annotation_text=f"vector added at layer {data.injection_layer}", annotation_position="bottom left",
                      annotation_font_color="black")
    from tvlens._plot import head_grid_axes

    rows = shape[0] - first
    fig.update_layout(title="Saliency |a · dp(gold)/da| per head (click a head)", height=max(420, 24 * rows + 180),
                      showlegend=False)
    return head_grid_axes(fig, shape[0], shape[1], first_layer=first)


def _ablation_fig(frame):
    import plotly.graph_objects as go

    kinds = [str(k) for k in frame["kind"]]
    fig = go.Figure([
        go.Bar(name="no ablation", x=kinds, y=frame["none"].tolist()),
        go.Bar(name="key heads ablated", x=kinds, y=frame["key"].tolist()),
        go.Bar(name="random heads ablated (mean ± std)", x=kinds, y=frame["random_mean"].tolist(),
               error_y={"type": "data", "array": frame["random_std"].tolist()}),
    ])
    fig.update_layout(barmode="group", title="Accuracy with the vector, key vs random heads ablated",
                      yaxis={"title": "accuracy", "range": [0, 1.05]}, xaxis_title="ablation kind", height=380)
    return fig


def _sink_fig(frame, data: DashboardData):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Mean attention from the last position",
                                                        "Layers of the key heads"))
    labels = [f"N-{int(o)}" if int(o) else "N (last)" for o in frame["offset"]]
    for col, color in (("key", "crimson"), ("random", "gray")):
        fig.add_trace(go.Scatter(x=labels, y=frame[col].tolist(), mode="lines+markers", name=f"{col} heads",
                                 line={"color": color}), row=1, col=1)
    fig.update_xaxes(title_text="key position N-k, k tokens before the last token N (prompts aligned at the end)",
                     autorange="reversed", row=1, col=1)
    fig.update_yaxes(title_text="attention", row=1, col=1)
    n_layers = data.shape[0]
    key_layers = data.heads.loc[data.heads["key"].astype(bool), "layer"].tolist() if "key" in data.heads else []
    counts = [key_layers.count(i) for i in range(n_layers)]
    fig.add_trace(go.Bar(x=list(range(n_layers)), y=counts, name="key heads", marker_color="crimson", showlegend=False),
                  row=1, col=2)
    if data.injection_layer is not None:
        fig.add_vline(x=data.injection_layer - 0.5, line={"dash": "dash"}, row=1, col=2)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    fig.update_yaxes(title_text="key heads", row=1, col=2)
    fig.update_layout(height=400)
    return fig


_SCRIPT = """
function tvlEsc(t) { return String(t).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
function tvlShow(layer, head) {
  const d = TVL, i = layer * d.n_heads + head, row = d.rows[i];
  if (!row) return;
  const fmt = v => (v === null || v === undefined) ? "-" : (typeof v === "number" ? (Number.isInteger(v) ? v : v.toPrecision(4)) : v);
  document.getElementById("tvl-head-info").innerHTML = "<b>layer " + layer + ", head " + head + "</b>: " +
    Object.keys(row).filter(k => k !== "layer" && k !== "head").map(k => k.replace(/_/g, " ") + " " + tvlEsc(fmt(row[k]))).join(" &middot; ");
  const labels = d.tokens.map((t, j) => j + ": " + tvlEsc(JSON.stringify(t)));
  Plotly.react("tvl-pattern", [{type: "heatmap", z: d.patterns[layer][head], x: labels, y: labels, zmin: 0, zmax: 1,
      colorscale: [[0, "#ffffff"], [1, "#08306b"]], colorbar: {title: {text: "attention"}},
      hovertemplate: "query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"}],
    {title: {text: "Attention of L" + layer + "H" + head + " on an example prompt (vector added)"},
     yaxis: {autorange: "reversed", title: {text: "query position"}}, xaxis: {title: {text: "key position"}},
     height: 440, margin: {l: 120, b: 120}});
  const toks = d.decoded[i].slice(0, 10), vals = d.decoded_values[layer][head].slice(0, toks.length);
  Plotly.react("tvl-decoded", [{type: "bar", orientation: "h", x: vals.slice().reverse(),
      y: toks.map((t, j) => (j + 1) + ". " + tvlEsc(JSON.stringify(t))).reverse(), marker: {color: "seagreen"},
      hovertemplate: "%{y}: %{x:.3f}<extra></extra>"}],
    {title: {text: toks.length ? "Top tokens of its OV output (direct logit)" : "No OV product: this head comes before the vector"},
     xaxis: {title: {text: "logit"}}, yaxis: {dtick: 1, automargin: true}, height: 440, margin: {l: 150}});
}
"""


def render_dashboard(data: DashboardData) -> str:
    """The page's HTML (plotly.js inlined once; nothing is fetched)."""
    frame = data.heads
    shape = data.shape
    rows: list[dict | None] = [None] * (shape[0] * shape[1])
    for rec in frame.to_dict("records"):
        rows[int(rec["layer"]) * shape[1] + int(rec["head"])] = {
            k: (bool(v) if k == "key" else (_num(v) if not isinstance(v, str) else v)) for k, v in rec.items()}
    payload = {"n_layers": shape[0], "n_heads": shape[1], "tokens": list(data.tokens),
               "patterns": [[[[_round(x, 4) for x in q] for q in h] for h in layer] for layer in data.patterns.tolist()],
               "decoded": [list(t) for t in data.decoded],
               "decoded_values": [[[_round(x, 3) for x in h] for h in layer] for layer in data.decoded_values.tolist()],
               "rows": rows}
    top = frame.sort_values("saliency", ascending=False).iloc[0]
    on_load = (_SCRIPT + "\nvar tvlDiv = document.getElementById('{plot_id}');\n"
               "tvlDiv.on('plotly_click', function (ev) { const p = ev.points[0]; tvlShow(Math.round(p.y), Math.round(p.x)); });\n"
               # the panel's divs come after the heatmap: draw a head once the page is parsed, the one the
               # address names (page.html#L3H1, sent through the click handler) or the most salient one
               "window.addEventListener('load', function () {\n"
               "  const m = /^#L(\\d+)H(\\d+)$/.exec(window.location.hash);\n"
               "  if (m) { tvlDiv.emit('plotly_click', {points: [{x: +m[2], y: +m[1]}]}); }\n"
               f"  else {{ tvlShow({int(top['layer'])}, {int(top['head'])}); }}\n}});\n")
    parts = [f"<script>const TVL = {_js(payload)};</script>", "<h2>Head saliency</h2>",
             _heatmap(data).to_html(full_html=False, include_plotlyjs=True, div_id="tvl-heatmap", post_script=on_load),
             "<h2>Selected head</h2><p id=\"tvl-head-info\"></p>",
             '<div class="row"><div id="tvl-pattern" class="half"></div><div id="tvl-decoded" class="half"></div></div>']
    if data.ablation is not None and len(data.ablation):
        parts += ["<h2>Ablation</h2>", _ablation_fig(data.ablation).to_html(full_html=False, include_plotlyjs=False),
                  data.ablation.to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep="-")]
    if data.sinks is not None and len(data.sinks):
        parts += ["<h2>Attention sinks and where the key heads are</h2>",
                  _sink_fig(data.sinks, data).to_html(full_html=False, include_plotlyjs=False)]
    table = frame[frame["saliency"].notna()].sort_values("saliency", ascending=False).head(20)
    parts += ["<h2>The 20 most salient heads</h2>", table.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-")]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.notes)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(data.title)}</title><style>body{{font-family:sans-serif;margin:1.5em}} "
            "table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} "
            ".row{display:flex;flex-wrap:wrap} .half{flex:1 1 480px;min-width:420px}</style></head>"
            f"<body><h1>{html.escape(data.title)}</h1><ul>{notes}</ul>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_dashboard(data: DashboardData, path: str | os.PathLike, *, overwrite: bool = True) -> Dashboard:
    """Render ``data`` and write the page to ``path`` atomically; returns the :class:`Dashboard`."""
    page = Dashboard(render_dashboard(data))
    return Dashboard(page.html, page.save(path, overwrite=overwrite))


def circuit_dashboard(data: DashboardData, path: str | os.PathLike | None = None, *, overwrite: bool = True) -> Dashboard:
    """What :meth:`Circuit.dashboard <tvlens.analysis.Circuit.dashboard>` returns: the page, written to ``path`` when given."""
    return write_dashboard(data, path, overwrite=overwrite) if path is not None else Dashboard(render_dashboard(data))


register_view("dashboard", circuit_dashboard)
