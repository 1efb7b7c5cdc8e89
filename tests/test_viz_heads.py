"""The head-saliency dashboard page (tvlens.viz.heads), from synthetic frames: offline, clickable, rendered."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
import torch

from tvlens.errors import ConfigError, OutputExistsError
from tvlens.viz.heads import Dashboard, DashboardData, render_dashboard, write_dashboard

N_LAYERS, N_HEADS, TOKENS = 3, 4, ("<s>", "kevi", "</script>", "->")


def make_data(**changes) -> DashboardData:
    g = torch.Generator().manual_seed(0)
    sal = torch.rand(N_LAYERS, N_HEADS, generator=g)
    rows = [{"layer": l_, "head": h, "saliency": float(sal[l_, h]), "sink_mass": 0.1 * h, "ov_norm": float(l_),
             "exact_effect": float("nan") if (l_, h) == (0, 0) else 0.5} for l_ in range(N_LAYERS) for h in range(N_HEADS)]
    frame = pd.DataFrame(rows)
    frame["rank"] = frame["saliency"].rank(ascending=False).astype(int)
    frame["key"] = frame["rank"] <= 2
    pats = torch.softmax(torch.randn(N_LAYERS, N_HEADS, len(TOKENS), len(TOKENS), generator=g), -1)
    decoded = tuple(() if l_ == 0 else (f"tok{l_}{h}", "<b>") for l_ in range(N_LAYERS) for h in range(N_HEADS))
    ablation = pd.DataFrame({"kind": ["zero", "path"], "none": [0.9, 0.9], "key": [0.3, 0.6],
                             "random_mean": [0.8, 0.85], "random_std": [0.05, 0.02]})
    sinks = pd.DataFrame({"offset": [3, 2, 1, 0], "key": [0.2, 0.1, 0.2, 0.5], "random": [0.7, 0.1, 0.1, 0.1]})
    kw = dict(title="test dashboard", heads=frame, tokens=TOKENS, patterns=pats, decoded=decoded,
              decoded_values=torch.randn(N_LAYERS, N_HEADS, 2, generator=g), ablation=ablation, sinks=sinks,
              injection_layer=1, notes=("a note",))
    kw.update(changes)
    return DashboardData(**kw)


def embedded(page: str) -> dict:
    m = re.search(r"<script>const TVL = (.*?);</script>", page, re.S)
    assert m, "the per-head data block is missing"
    return json.loads(m.group(1))


def test_page_is_self_contained_and_carries_every_head():
    page = render_dashboard(make_data())
    assert page.count("plotly.js v") >= 1 and len(page) > 3_000_000  # plotly.js inline ...
    assert len(re.findall(r"/\*\*\s*\n\s*\* plotly\.js v", page)) == 1  # ... exactly once
    # nothing is fetched: no element loads a file (plotly.js itself only names a CDN for geo maps)
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)
    data = embedded(page)
    assert (data["n_layers"], data["n_heads"]) == (N_LAYERS, N_HEADS)
    assert len(data["rows"]) == N_LAYERS * N_HEADS and data["rows"][5]["layer"] == 1 and data["rows"][5]["head"] == 1
    assert data["rows"][0]["exact_effect"] is None  # NaN -> null, valid JSON
    page = render_dashboard(make_data(decoded_values=torch.full((N_LAYERS, N_HEADS, 2), float("nan"))))
    assert embedded(page)["decoded_values"][0][0] == [None, None]
    assert data["tokens"] == list(TOKENS)
    assert torch.allclose(torch.tensor(data["patterns"]), make_data().patterns, atol=1e-4)
    assert "plotly_click" in page and "tvl-pattern" in page and "tvl-decoded" in page
    # a token spelling a closing tag cannot end the script early
    assert page.count("</script>") == page.count("<script")


def test_sections_follow_the_data():
    full = render_dashboard(make_data())
    assert "<h2>Ablation</h2>" in full and "Attention sinks" in full
    bare = render_dashboard(make_data(ablation=None, sinks=None))
    assert "<h2>Ablation</h2>" not in bare and "Attention sinks" not in bare and "Head saliency" in bare


@pytest.mark.parametrize("change, match", [
    ({"patterns": torch.zeros(N_LAYERS, N_HEADS, 2, 2)}, "patterns must be"),
    ({"decoded": ((),)}, "decoded tokens"),
    ({"heads": pd.DataFrame({"layer": [0], "head": [0]})}, "lacks columns"),
])
def test_inconsistent_data_is_refused(change, match):
    with pytest.raises(ConfigError, match=match):
        make_data(**change)


def test_write_and_notebook_view(tmp_path):
    path = tmp_path / "heads.html"
    page = write_dashboard(make_data(), path)
    assert page.path == path and path.read_text(encoding="utf-8") == page.html
    with pytest.raises(OutputExistsError):
        write_dashboard(make_data(), path, overwrite=False)
    frame = Dashboard(page.html)._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and "<script>" not in frame  # escaped into the attribute
    assert "MB" in repr(page)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1200,1000",
           "--virtual-time-budget=8000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_renders_in_headless_chromium(tmp_path):
    """A person opening the page sees the heatmap, and a click (here: the #L2H3 address, which is
    sent through the same plotly_click handler) fills the head panel with that head's plots."""
    path = tmp_path / "heads.html"
    write_dashboard(make_data(), path)
    dom = _chromium(tmp_path, f"file://{path}#L2H3", "--dump-dom").stdout
    assert dom.count('class="main-svg"') >= 6, "plotly drew too few plots"  # heatmap, pattern, decoded, ablation, sinks
    heat = dom.split('id="tvl-heatmap"')[1].split("<h2>")[0]
    assert 'class="hm"' in heat or "heatmaplayer" in heat, "no heatmap layer in the first plot"
    assert re.search(r'id="tvl-head-info"><b>layer 2, head 3</b>', dom), "the click did not select L2H3"
    pattern = dom.split('id="tvl-pattern"')[1].split('id="tvl-decoded"')[0]
    assert "main-svg" in pattern and "L2H3" in pattern
    png = tmp_path / "shot.png"
    _chromium(tmp_path, f"file://{path}", f"--screenshot={png}")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 30_000, "the screenshot is (nearly) blank"
