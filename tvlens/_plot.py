"""Plot conventions shared by every per-head figure (ground level: plotly only, imported lazily by callers).

One convention for a layer x head grid, so the analyses' own ``.plot()`` and the dashboard read the
same way: heads across, layers up (layer 0 at the bottom, as the residual stream is drawn), one
tick per integer (never a half-integer tick between two heads), every cell inside the axes.
"""

from __future__ import annotations


def head_grid_axes(fig, n_layers: int, n_heads: int, *, first_layer: int = 0, row=None, col=None):
    """Lay out ``fig``'s axes as a layer x head grid of ``n_layers`` x ``n_heads`` cells (rows from
    ``first_layer``); returns ``fig``. A tick on every layer where a row is at least 14 px high at the
    figure's height (plotly's 450 px when unset), else on every 2nd (7 px) or 5th layer: labels never overlap."""
    rows = n_layers - first_layer
    where = {} if row is None else {"row": row, "col": col}
    fig.update_xaxes(title_text="head", tickmode="linear", tick0=0, dtick=1, range=[-0.5, n_heads - 0.5], **where)
    fig.update_yaxes(title_text="layer", tickmode="linear", tick0=0, dtick=layer_tick(rows, fig.layout.height),
                     range=[first_layer - 0.5, n_layers - 0.5], autorange=False, **where)
    return fig


def layer_tick(rows: int, height: int | float | None = None) -> int:
    """The layer-tick step for ``rows`` rows in a figure ``height`` px high (None: plotly's 450)."""
    per_row = ((height or 450) - 180) / max(rows, 1)  # about 180 px go to the title, margins and the head axis
    return 1 if per_row >= 14 else 2 if per_row >= 7 else 5


def integer_axis(fig, axis: str = "x", values=None, *, row=None, col=None):
    """An axis of whole numbers (layers, shots, counts): one tick per value in ``values`` (or per integer),
    never a tick between two; returns ``fig``."""
    where = {} if row is None else {"row": row, "col": col}
    update = fig.update_xaxes if axis == "x" else fig.update_yaxes
    if values is not None:
        vals = sorted({int(v) for v in values})
        update(tickmode="array", tickvals=vals, ticktext=[str(v) for v in vals], **where)
    else:
        update(tickmode="linear", tick0=0, dtick=1, **where)
    return fig
