"""Jupyter as users run it: a tvlens ``.plot()`` and the head dashboard display inline in JupyterLab, offline.

A small notebook is executed here (nbclient, this interpreter's kernel; plotly's default renderer
in a kernel stores ``application/vnd.plotly.v1+json``, which the JupyterLab extension bundled with
plotly draws), signed as trusted in a temporary Jupyter data dir, and opened from a local
JupyterLab server in headless Chromium. Every request that leaves 127.0.0.1 is aborted and fails
the test; the plotly figure and the dashboard (an iframe with plotly.js inlined) must be drawn.

Skips without the ``notebook`` extra (JupyterLab), Playwright (the ``docs`` extra) or a Chromium
binary.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab", reason="the notebook extra is not installed (pip install -e '.[notebook]')")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
sync_api = pytest.importorskip("playwright.sync_api", reason="the docs extra is not installed (pip install -e '.[docs]')")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((c for c in (os.environ.get("BROWSER_PATH"), "/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if c and Path(c).exists()), None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary")]
TOKEN = "tvlens-test"

CELLS = [
    'import tvlens as tv\nmodel = tv.load_model("toy")\n'
    'tv.icl_baselines(model, [tv.tasks.get("toy/antonym")], shots=(0, 1)).plot()',
    'import pandas as pd, torch\nfrom tvlens.viz.heads import Dashboard, DashboardData, render_dashboard\n'
    'frame = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "saliency": [0.1, 0.4, 0.2, 0.3]})\n'
    'data = DashboardData("demo <b>not bold</b>", frame, ("<s>", "a", "->"), torch.full((2, 2, 3, 3), 1 / 3),\n'
    '                     (("x",),) * 4, torch.ones(2, 2, 1))\n'
    'Dashboard(render_dashboard(data))',
]


@pytest.fixture()
def jupyter_env(tmp_path, monkeypatch):
    spec_dir = tmp_path / "data" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tvlens test kernel", "language": "python"}))
    env = {"JUPYTER_DATA_DIR": tmp_path / "data", "JUPYTER_PATH": tmp_path / "data", "JUPYTER_CONFIG_DIR": tmp_path / "config",
           "JUPYTER_RUNTIME_DIR": tmp_path / "runtime", "IPYTHONDIR": tmp_path / "ipython", "HOME": tmp_path / "home"}
    for k, v in env.items():
        Path(v).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(k, str(v))
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *pythonpath]))
    monkeypatch.delenv("PLOTLY_RENDERER", raising=False)  # the renderer a user's kernel picks
    return tmp_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"jupyter lab did not answer {url} within {timeout} s")


def test_plot_and_dashboard_inline_in_jupyterlab_offline(jupyter_env):
    work = jupyter_env / "work"
    work.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(work)}}).execute()
    kinds = [sorted(o.get("data", {})) for c in nb.cells for o in c.outputs]
    assert ["application/vnd.plotly.v1+json"] in kinds, kinds  # the plot is stored as plotly's JSON
    nbformat.sign.NotebookNotary(data_dir=str(jupyter_env / "data")).sign(nb)  # trusted, as if the user ran it
    nbformat.write(nb, work / "t.ipynb")

    port = _free_port()
    log = open(jupyter_env / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
                             "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={work}",
                             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=work)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{base}/api/status?token={TOKEN}", proc)
        outside: list[str] = []
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})

                def route(r):
                    if r.request.url.startswith((base + "/", f"ws://127.0.0.1:{port}/", "data:", "blob:", "about:")):
                        r.continue_()
                    else:
                        outside.append(r.request.url)
                        r.abort()

                page.route("**/*", route)
                page.goto(f"{base}/lab/tree/t.ipynb?token={TOKEN}")
                page.wait_for_selector(".jp-OutputArea .js-plotly-plot .main-svg", timeout=90_000)
                dash = page.frame_locator(".jp-OutputArea iframe")
                dash.locator("#tvl-heatmap .main-svg").first.wait_for(timeout=60_000)
                assert dash.locator("h1").inner_text() == "demo <b>not bold</b>"  # escaped, not markup
            finally:
                browser.close()
        assert not outside, f"requests left the machine: {sorted(set(outside))[:10]}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
