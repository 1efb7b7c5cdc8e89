"""Plot conventions, read from the figures' layouts: every per-head heatmap draws layer 0 at the
bottom with one tick per head and per layer (as the dashboard does), counts get integer axes, and
no axis title is long enough to run off the page. Hand-made results, no model needed."""

from __future__ import annotations

import pytest
import torch

from tvlens._plot import head_grid_axes, integer_axis, layer_tick


def _assert_head_grid(fig, n_layers: int, n_heads: int, first: int = 0):
    x, y = fig.layout.xaxis, fig.layout.yaxis
    assert (x.tickmode, x.dtick, tuple(x.range)) == ("linear", 1, (-0.5, n_heads - 0.5))  # no half-integer head ticks
    assert y.autorange is False and tuple(y.range) == (first - 0.5, n_layers - 0.5)  # layer 0 at the bottom
    assert y.dtick == layer_tick(n_layers - first, fig.layout.height)
    assert (x.title.text, y.title.text) == ("head", "layer")


def test_head_grid_axes_and_integer_axis():
    import plotly.graph_objects as go

    _assert_head_grid(head_grid_axes(go.Figure(), 30, 9), 30, 9)
    assert [layer_tick(r) for r in (5, 19, 20, 38, 39)] == [1, 1, 2, 2, 5]  # at 450 px: 270 px of rows
    assert layer_tick(30, 24 * 30 + 180) == 1  # the dashboard's height gives every layer its tick
    _assert_head_grid(head_grid_axes(go.Figure(), 40, 4, first_layer=2), 40, 4, first=2)
    _assert_head_grid(head_grid_axes(go.Figure(), 40, 4, first_layer=20), 40, 4, first=20)
    fig = integer_axis(go.Figure(), "x", [8, 0, 2, 2])
    assert tuple(fig.layout.xaxis.tickvals) == (0, 2, 8) and tuple(fig.layout.xaxis.ticktext) == ("0", "2", "8")


def test_every_per_head_heatmap_follows_the_dashboard():
    from tvlens.analysis import HeadSaliency
    from tvlens.baselines import AIEResult

    s = torch.rand(5, 4)
    sal = HeadSaliency(s, s, "grad", 2, "toy/antonym", 10, 0.5)
    _assert_head_grid(sal.plot(), 5, 4)
    aie = AIEResult("toy/antonym", torch.randn(5, 4), torch.zeros(5, 4, 8), 0.1, 0.9, 9, 10, 10)
    fig = aie.plot()
    _assert_head_grid(fig, 5, 4)
    assert fig.data[0].z.shape == (5, 4)


def test_ov_products_heatmap_follows_the_dashboard(tiny_model):
    import tvlens as tv
    from tvlens.analysis import ov_products

    v = tv.TaskVector(torch.randn(1, tiny_model.cfg.d_model), (tv.Site(1, -1),), task="toy/antonym",
                      model_fingerprint=tv.fingerprint(tiny_model))
    res = ov_products(tiny_model, v, "toy/antonym", n=4)
    _assert_head_grid(res.plot(), tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)


def test_sinks_plot_has_short_axis_titles_and_integer_layers():
    from tvlens.analysis import SinkResult

    L, H, O = 4, 2, 6
    r = SinkResult("toy/antonym", 1, ((2, 0), (3, 1)), (((1, 0), (2, 1)),), torch.rand(L, H, O), torch.full((O,), 5),
                   torch.rand(L, H), torch.rand(L, H), 5)
    fig = r.plot()
    titles = [a.title.text for a in (fig.layout.xaxis, fig.layout.xaxis2, fig.layout.yaxis, fig.layout.yaxis2)]
    assert all(t and len(t) <= 32 for t in titles), titles  # a long title is centred and clipped at the page's edge
    assert (fig.layout.xaxis2.tickmode, fig.layout.xaxis2.dtick) == (fig.layout.yaxis2.tickmode, fig.layout.yaxis2.dtick) == ("linear", 1)


def test_baseline_table_treats_k_as_a_count():
    import tvlens as tv

    def result(k, acc):
        z = torch.zeros(2, dtype=torch.long)
        return tv.EvalResult("toy/antonym", k, "test", acc, None, z, z, torch.zeros(2), ("a", "b"))

    table = tv.BaselineTable((result(0, 0.5), result(1, 1.0), result(8, 1.0)))
    fig = table.plot()
    assert tuple(fig.layout.xaxis.tickvals) == (0, 1, 8) and fig.layout.xaxis.title.text == "demonstrations k"
    assert list(fig.data[0].x) == [0, 1, 8] and list(fig.data[0].y) == pytest.approx([0.5, 1.0, 1.0])
