"""MkDocs hooks: the live head dashboard of each model whose figures were made; pages kept offline.

``docs/figures/make.py`` saves the dashboard's frames (``figures/<model>/dashboard_data.json``,
a few kB); at build time this hook renders them with :func:`tvlens.viz.heads.render_dashboard`
into ``figures/<model>/heads.html`` on the site (plotly.js inlined, about 4.8 MB, so it is built,
not committed). Pages link to it like any other file, so ``mkdocs build --strict`` checks the link.

Offline: notebooks executed at build time carry two references to CDNs that the site does not
need. plotly's notebook renderer puts a MathJax ``<script src=cdnjs...>`` before every figure
(tvlens's figures hold no TeX), and nbconvert adds a loader of the Jupyter widget manager from
unpkg when a cell drew a progress bar widget (tqdm). Both are removed from the built pages; any
other ``<script>``, ``<link>``, ``<img>`` or ``<iframe>`` that would fetch from another host is a
warning, so ``--strict`` fails on it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

DOCS = Path(__file__).resolve().parent
log = logging.getLogger("mkdocs.hooks.tvlens")  # under "mkdocs": --strict counts its warnings
MATHJAX_CDN = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*"></script>')
WIDGET_LOADER = re.compile(r"<script[^>]*>(?:(?!</script>).)*?@jupyter-widgets/html-manager@(?:(?!</script>).)*?</script>", re.S)
EXTERNAL = re.compile(r'<(script|link|img|iframe)\b[^>]*?\b(src|href)="((?:https?:)?//[^"]+)"', re.I)
sys.path.insert(0, str(DOCS.parent))  # this checkout's tvlens, whichever one is installed
# notebooks executed at build time (TVLENS_DOCS_EXECUTE=true): plotly's JSON for JupyterLab plus HTML
# with plotly.js inlined once per notebook, so the pages draw every figure offline
os.environ.setdefault("PLOTLY_RENDERER", "plotly_mimetype+notebook")
os.environ["PYTHONPATH"] = os.pathsep.join([str(DOCS.parent), *filter(None, [os.environ.get("PYTHONPATH")])])  # the kernels'


def load_dashboard_data(path: Path):
    import pandas as pd
    import torch

    from tvlens.viz.heads import DashboardData

    obj = json.loads(path.read_text(encoding="utf-8"))

    def frame(f):
        return None if f is None else pd.read_json(io.StringIO(json.dumps(f)), orient="split")

    return DashboardData(obj["title"], frame(obj["heads"]), tuple(obj["tokens"]), torch.tensor(obj["patterns"]),
                         tuple(tuple(t) for t in obj["decoded"]), torch.tensor(obj["decoded_values"]),
                         frame(obj["ablation"]), frame(obj["sinks"]), obj["injection_layer"], tuple(obj["notes"]))


def on_files(files, config):
    from tvlens.viz.heads import render_dashboard

    for data_path in sorted(DOCS.glob("figures/*/dashboard_data.json")):
        uri = f"figures/{data_path.parent.name}/heads.html"
        files.append(File.generated(config, uri, content=render_dashboard(load_dashboard_data(data_path))))
    return files


def on_post_page(output: str, page, config) -> str:
    output = MATHJAX_CDN.sub("", output)
    output = WIDGET_LOADER.sub("", output)
    for tag, _, url in EXTERNAL.findall(output):
        log.warning("%s: a <%s> would fetch %s (the site must load offline)", page.file.src_uri, tag, url)
    return output
