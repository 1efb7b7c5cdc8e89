"""The documentation site in a browser: built with ``mkdocs build --strict``, every page loaded offline.

Served from 127.0.0.1 (the search index is loaded by a web worker, which a file:// page may not
start); the browser resolves no other host, every request to one is recorded, and the test fails if
there is one.
Each page must log no console error and raise no page error, and every image in the content must
be loaded and drawn (a screenshot of it with more than a few colours). On the live head dashboard
(``figures/toy/heads.html``, rendered at build time by ``docs/hooks.py``) a real mouse click on a
heatmap cell must fill the head panel with that head.

Skips when the ``docs`` extra (mkdocs, playwright, pillow) is not installed, which is the case in
the test command's ``.[test]`` environment, or when no Chromium binary exists; ``.ci/docs`` installs
the extra and runs it.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("material", reason="the docs extra is not installed (pip install -e '.[docs]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the docs extra is not installed (pip install -e '.[docs]')")
Image = pytest.importorskip("PIL.Image", reason="the docs extra is not installed (pip install -e '.[docs]')")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((c for c in (os.environ.get("BROWSER_PATH"), "/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if c and Path(c).exists()), None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary")]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built here with ``mkdocs build --strict``; or, with TVLENS_DOCS_SITE=dir, the one already built
    there (.ci/docs builds it once, with the notebooks executed, and checks that one)."""
    if os.environ.get("TVLENS_DOCS_SITE"):
        out = Path(os.environ["TVLENS_DOCS_SITE"]).resolve()
        assert (out / "index.html").exists(), f"TVLENS_DOCS_SITE={out} holds no built site"
        return out
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no per-request lines in the test output
        pass


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking", "--disable-component-update",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
        try:
            yield b
        finally:
            b.close()


class Tab:
    """A page that records every request to another host than the local server, and console errors.

    The browser cannot reach another host anyway (``--host-resolver-rules`` maps every name but
    127.0.0.1 to nothing), so a recorded request is one the page tried and failed to make.
    """

    def __init__(self, browser, base: str):
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", self._request)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.base = base

    def _console(self, m) -> None:
        # the browser's own /favicon.ico request for a page that names none (the standalone dashboard)
        if m.type == "error" and not m.location.get("url", "").endswith("/favicon.ico"):
            self.errors.append(f"console: {m.text} ({m.location.get('url', '')})")

    def _request(self, request) -> None:
        if not request.url.startswith((self.base + "/", "data:", "blob:", "about:")):
            self.outside.append(request.url)

    def open(self, rel: str) -> None:
        self.page.goto(f"{self.base}/{rel}", wait_until="load")


def _pages(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if not p.relative_to(site).as_posix().startswith("figures/"))


def _colours(png: bytes) -> int:
    img = Image.open(io.BytesIO(png)).convert("RGB")
    return len(img.getcolors(maxcolors=1 << 16) or range(1 << 16))


def test_every_page_offline_no_error_images_drawn(site, server, browser):
    pages = _pages(site)
    assert {"index.html", "dashboard.html", "analysis-saliency.html", "api/analysis.html",
            "notebooks/03_heads.html"} <= set(pages), pages
    tab = Tab(browser, server)
    problems: list[str] = []
    n_images = n_plots = 0
    for rel in pages:
        tab.errors.clear()
        tab.open(rel)
        if rel != "404.html":  # the 404 page is served with status 200 here; it has no images
            assert tab.page.locator("article h1").count() >= 1, f"{rel}: no page heading (the theme did not render)"
        imgs = tab.page.locator("article img")
        for i in range(imgs.count()):
            img = imgs.nth(i)
            img.scroll_into_view_if_needed()
            src = img.get_attribute("src")
            ok = img.evaluate("e => e.complete && e.naturalWidth > 0 && e.naturalHeight > 0")
            box = img.bounding_box()
            if not ok or box is None or box["width"] < 50 or box["height"] < 50:
                problems.append(f"{rel}: image {src} not loaded or not visible ({box})")
                continue
            if _colours(img.screenshot()) < 8:
                problems.append(f"{rel}: image {src} drawn blank")
            n_images += 1
        # every plotly figure on the page (notebook outputs, when the notebooks were executed) drawn
        plots = tab.page.locator("article .js-plotly-plot")
        for i in range(plots.count()):
            plot = plots.nth(i)
            plot.scroll_into_view_if_needed()
            if plot.locator(".main-svg").count() == 0 or (plot.bounding_box() or {"height": 0})["height"] < 100:
                problems.append(f"{rel}: plotly figure {i} not drawn")
        n_plots += plots.count()
        # every embedded page (the dashboard of an executed notebook: an iframe) drawn too
        frames = tab.page.locator("article iframe")
        for i in range(frames.count()):
            frame = frames.nth(i)
            frame.scroll_into_view_if_needed()
            try:
                frame.content_frame.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=30_000)
            except sync_api.TimeoutError:
                problems.append(f"{rel}: iframe {i} has no drawn plotly figure")
                continue
            tab.page.wait_for_timeout(300)
            if _colours(frame.screenshot()) < 8:
                problems.append(f"{rel}: iframe {i} drawn blank")
            n_plots += 1
        problems += [f"{rel}: {e}" for e in tab.errors]
    assert not tab.outside, f"requests left the machine: {sorted(set(tab.outside))[:10]}"
    assert not problems, "\n".join(problems)
    assert n_images >= 10, f"only {n_images} images on the whole site"
    if _executed(site):
        assert n_plots >= 5, f"the notebooks were executed but only {n_plots} plotly figures are drawn"


def _executed(site: Path) -> bool:
    """Whether the notebooks were executed at build time (their pages then hold output cells)."""
    return re.search(r'class="[^"]*jp-OutputArea-output', (site / "notebooks" / "03_heads.html").read_text(encoding="utf-8")) is not None


def test_search_works_offline(site, server, browser):
    tab = Tab(browser, server)
    tab.open("index.html")
    tab.page.keyboard.press("s")  # Material's shortcut: focus the search box
    tab.page.keyboard.type("saliency")
    tab.page.wait_for_selector(".md-search-result__item", timeout=10_000)
    assert tab.page.locator(".md-search-result__item").count() > 0
    assert not tab.outside and not tab.errors, (tab.outside, tab.errors)


def test_dashboard_click_fills_head_panel(site, server, browser):
    assert (site / "figures/toy/heads.html").exists(), "the live dashboard was not built (docs/hooks.py)"
    tab = Tab(browser, server)
    tab.open("figures/toy/heads.html")
    tab.page.wait_for_selector("#tvl-heatmap .nsewdrag")
    tab.page.wait_for_function("document.getElementById('tvl-head-info').textContent.length > 0")
    before = tab.page.inner_text("#tvl-head-info")
    n_layers, n_heads, first = tab.page.evaluate(
        "() => [TVL.n_layers, TVL.n_heads, Math.ceil(document.getElementById('tvl-heatmap')._fullLayout.yaxis.range[0])]")
    # a head that reads the vector and is not the one the page opened on
    target = next((layer, h) for layer in range(n_layers - 1, first - 1, -1) for h in range(n_heads)
                  if not before.startswith(f"layer {layer}, head {h}:"))
    x, y = tab.page.evaluate("""([layer, head]) => {
        const gd = document.getElementById('tvl-heatmap');
        const fl = gd._fullLayout, box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [box.left + fl.xaxis.l2p(head), box.top + fl.yaxis.l2p(layer)];
    }""", list(target))
    tab.page.mouse.click(x, y)
    tab.page.wait_for_function(
        f"document.getElementById('tvl-head-info').textContent.startsWith('layer {target[0]}, head {target[1]}:')", timeout=5_000)
    title = tab.page.locator("#tvl-pattern .gtitle").text_content()
    assert f"L{target[0]}H{target[1]}" in title, title
    assert tab.page.locator("#tvl-decoded .bars path").count() > 0, "the OV-token bars were not drawn"
    assert not tab.outside and not tab.errors, (tab.outside, tab.errors)
