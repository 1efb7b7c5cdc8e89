"""Regenerate every static figure of the documentation, from tvlens's own ``.plot()`` figures.

    python docs/figures/make.py                     # the embedded model: docs/figures/toy/*.png
    python docs/figures/make.py --model smollm2     # SmolLM2-135M: docs/figures/smollm2/*.png (tens of minutes)
    python docs/figures/make.py --only lens linear  # some groups only

Each group runs the analyses the way its page documents them (seed 0, default options unless
said), draws each result with its own ``.plot()`` and exports it as a PNG with kaleido, which
drives the system Chromium (``BROWSER_PATH``, default ``/usr/bin/chromium`` when it exists); the
mathjax script kaleido names is never needed, so nothing has to be fetched. The dashboard is
screenshotted in headless Chromium (Playwright, ``executable_path``) after a real click on one
of its heatmap cells. PNGs are quantised to 256 colours so the whole set stays small.

``docs/figures/<model>/figures.json`` records, per image, the page it belongs on, the Python that
made it, the seconds its analysis took (work shared by a group, such as training its LTVs, is
counted once, on the group's first figure; ``tv.compare`` includes its own LTVs), and its size; ``tests/test_docs_figures.py`` checks that every image
is listed there and shown on its page.

Requires the ``docs`` extra (kaleido, playwright, pillow) and a Chromium binary.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GROUPS = ("heads", "lens", "linear", "geometry", "results")
WIDTH = 760  # px: the width of Material's content column, so images are shown at their own size
TOY_GEOMETRY_TASKS = ("toy/antonym", "toy/capitalize", "toy/successor", "toy/capital", "toy/add3", "toy/sentiment")


@dataclass(frozen=True)
class Setup:
    """What each model's figures run on (the values the pages document)."""

    model: str  # tv.load_model spec
    heads_task: str  # the heads pages' task
    heads_layer: int  # θ's layer there
    fraction: float  # share of scored heads called key heads
    n: int | None  # test queries of the heads analyses (None: all)
    lens_task: str  # logit lens and linear propagation
    geometry_tasks: tuple[str, ...]
    geometry_seeds: tuple[int, ...]
    geometry_layer: int
    sweep_task: str
    sweep_layers: tuple[int, ...] | None  # None: every layer
    compare_tasks: tuple[str, ...] | None  # None: every toy task
    fv_shots: int


SETUPS = {
    "toy": Setup("toy", "toy/antonym", 2, 0.25, None, "toy/category", TOY_GEOMETRY_TASKS, (0, 1, 2), 2,
                 "toy/antonym", None, None, 8),
    "smollm2": Setup("smollm2", "capitalize", 15, 0.1, 100, "capitalize", ("capitalize", "antonym", "capital"), (0, 1), 15,
                     "capitalize", (6, 12, 15, 18, 21, 24), ("capitalize", "antonym", "capital"), 10),
}


@dataclass
class Figure:
    file: str  # name under docs/figures/<model>/
    page: str  # the docs page that shows it
    what: str  # one line: what it shows
    python: str  # the call that made the result
    fig: object = field(repr=False, default=None)  # plotly figure (None: a screenshot already written)
    height: int | None = None
    seconds: float = 0.0


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 2)


# --- the groups: each returns Figures -------------------------------------------------------------

def heads(model, s: Setup, out: Path) -> list[Figure]:
    import tvlens as tv

    task = tv.tasks.get(s.heads_task)
    splits = tv.make_splits(task, seed=0)
    ltv, t_ltv = _timed(lambda: tv.train_ltv(model, task, layers=[s.heads_layer], splits=splits, progress=False))
    c = tv.circuit(model, ltv.vector, task, fraction=s.fraction, n=s.n)
    made = f"v = tv.train_ltv(model, {s.heads_task!r}, layers=[{s.heads_layer}]).vector; " \
           f"c = tv.circuit(model, v, {s.heads_task!r}, fraction={s.fraction}{'' if s.n is None else f', n={s.n}'})"
    figs = []
    ov, t = _timed(c.ov)
    figs.append(Figure("ov_products.png", "analysis-ov.md", "per-head OV products of θ", made + "; c.ov().plot()", ov.plot(), seconds=t))
    rec, t = _timed(c.reconstruction)
    figs.append(Figure("ov_reconstruction.png", "analysis-ov.md", "accuracy with θ vs θ replaced by OV products",
                       made + "; c.reconstruction().plot()", rec.plot(), seconds=t))
    sal, t = _timed(c.saliency)
    figs.append(Figure("saliency.png", "analysis-saliency.md", "one-pass saliency per head", made + "; c.saliency().plot()",
                       sal.plot(), seconds=t))
    for kind in ("zero", "path"):
        ab, t = _timed(lambda: c.ablate(kind))
        figs.append(Figure(f"ablation_{kind}.png", "analysis-ablation.md", f"{kind} ablation: key vs random heads",
                           made + f"; c.ablate({kind!r}).plot()", ab.plot(), seconds=t))
    sk, t = _timed(c.sinks)
    figs.append(Figure("sinks.png", "analysis-sinks.md", "attention from the last position, key vs random heads",
                       made + "; c.sinks().plot()", sk.plot(), seconds=t))
    layer, head = c.key_heads()[0]
    hd, t = _timed(lambda: c.head(layer, head))
    figs.append(Figure("head_detail.png", "analysis-circuit.md", "the most salient head's attention pattern",
                       made + f"; c.head({layer}, {head}).plot()", hd.plot(), seconds=t))
    # the dashboard: written, opened in headless Chromium, clicked, screenshotted
    keys = c.key_heads()
    target = keys[1] if len(keys) > 1 else keys[0]  # not the head the page opens on, so the click shows
    with tempfile.TemporaryDirectory() as tmp:
        page, t = _timed(lambda: c.dashboard(Path(tmp) / "heads.html", kinds=("zero", "path")))
        t_shot = screenshot_dashboard(Path(tmp) / "heads.html", out / "dashboard.png", target)
    # the same page, live on the site: docs/hooks.py renders it from these frames at build time
    save_dashboard_data(c.dashboard_data(kinds=("zero", "path")), out / "dashboard_data.json")
    figs.append(Figure("dashboard.png", "dashboard.md", f"the head dashboard after a click on the heatmap cell of L{target[0]}H{target[1]}",
                       made + "; c.dashboard('heads.html', kinds=('zero', 'path')), clicked in headless Chromium",
                       seconds=round(t + t_shot, 2)))
    figs[0].seconds += t_ltv
    return figs


def lens(model, s: Setup, out: Path, cache: dict) -> list[Figure]:
    import tvlens as tv
    from tvlens.analysis import logit_lens

    task = tv.tasks.get(s.lens_task)
    ltvs, t_ltv = _timed(lambda: _ltvs(model, task, cache))
    L = model.cfg.n_layers
    early, late = L // 4, (3 * L) // 4
    res, t = _timed(lambda: logit_lens(model, task, vectors={f"θ@L{early}": ltvs[early], f"θ@L{late}": ltvs[late]}, shots=(0, 8)))
    cache["lens"] = res
    return [Figure("lens.png", "analysis-lens.md", "logit-lens accuracy and task alignment per layer",
                   f"ltvs = {{l: tv.train_ltv(model, {s.lens_task!r}, layers=[l]).vector for l in {_layers_text(model)}}}; "
                   f"logit_lens(model, {s.lens_task!r}, vectors={{'θ@L{early}': ltvs[{early}], 'θ@L{late}': ltvs[{late}]}}, "
                   "shots=(0, 8)).plot()", res.plot(), seconds=round(t + t_ltv, 2))]


def linear(model, s: Setup, out: Path, cache: dict) -> list[Figure]:
    import tvlens as tv
    from tvlens.analysis import linear_propagation, logit_lens, rotation_vs_stretch

    task = tv.tasks.get(s.lens_task)
    ltvs, t_ltv = _timed(lambda: _ltvs(model, task, cache))
    if "lens" not in cache:
        L = model.cfg.n_layers
        cache["lens"] = logit_lens(model, task, vectors={f"θ@L{L // 4}": ltvs[L // 4], f"θ@L{3 * L // 4}": ltvs[3 * L // 4]},
                                   shots=(0, 8))
    mid = sorted(ltvs)[len(ltvs) // 2]
    fit, t1 = _timed(lambda: linear_propagation(model, ltvs[mid], task))
    rs, t2 = _timed(lambda: rotation_vs_stretch(model, ltvs, task, lens=cache["lens"]))
    made = f"ltvs = {{l: tv.train_ltv(model, {s.lens_task!r}, layers=[l]).vector for l in {_layers_text(model)}}}"
    return [Figure("linear.png", "analysis-linear.md", f"the fit of W_TV at layer {mid}",
                   made + f"; linear_propagation(model, ltvs[{mid}], {s.lens_task!r}).plot()", fit.plot(), seconds=round(t1 + t_ltv, 2)),
            Figure("rotation.png", "analysis-linear.md", "rotation vs stretch per layer",
                   made + f"; rotation_vs_stretch(model, ltvs, {s.lens_task!r}, lens=lens).plot()", rs.plot(), seconds=t2)]


def geometry(model, s: Setup, out: Path) -> list[Figure]:
    import tvlens as tv
    from tvlens.analysis import composition, train_vectors, transfer_matrix, vector_cosines
    from tvlens.tasks._composed import parts as parts_of

    vectors, t0 = _timed(lambda: train_vectors(model, list(s.geometry_tasks), seeds=s.geometry_seeds, layer=s.geometry_layer,
                                               config=tv.LTVConfig()))
    made = f"vectors = train_vectors(model, {list(s.geometry_tasks)}, seeds={s.geometry_seeds}, layer={s.geometry_layer})"
    cm, t1 = _timed(lambda: vector_cosines(vectors))
    tr, t2 = _timed(lambda: transfer_matrix(model, vectors))
    composed = "toy/capitalize+antonym" if s.model == "toy" else "capitalize+antonym"
    a_name, b_name = parts_of(tv.tasks.get(composed).base_name)
    a = next(v for v in vectors if v.task == a_name)
    b = next(v for v in vectors if v.task == b_name)
    comp, t3 = _timed(lambda: composition(model, a, b, composed, scales=(1.0, 0.5)))
    return [Figure("cosines.png", "analysis-geometry.md", "cosines of every pair of task vectors", made + "; vector_cosines(vectors).plot()",
                   cm.plot(), seconds=round(t0 + t1, 2)),
            Figure("transfer.png", "analysis-geometry.md", "every vector on every task", made + "; transfer_matrix(model, vectors).plot()",
                   tr.plot(), seconds=t2),
            Figure("composition.png", "analysis-geometry.md", f"the sum of the {a_name} and {b_name} vectors on {composed}",
                   made + f"; composition(model, a, b, {composed!r}, scales=(1.0, 0.5)).plot()  # a, b: the seed-0 vectors",
                   comp.plot(), seconds=t3)]


def results(model, s: Setup, out: Path) -> list[Figure]:
    import tvlens as tv

    task = tv.tasks.get(s.sweep_task)
    sw, t1 = _timed(lambda: tv.sweep(model, task, layers=s.sweep_layers, fv_shots=s.fv_shots, ltv_config=tv.LTVConfig(seed=0)))
    names = list(s.compare_tasks) if s.compare_tasks else tv.tasks.toy_task_names()
    cmp, t2 = _timed(lambda: tv.compare(model, [tv.tasks.get(n) for n in names], fv_shots=s.fv_shots, ltv_config=tv.LTVConfig(seed=0)))
    (_, aie), t3 = _timed(lambda: tv.function_vector(model, task, layer=1 if s.model == "toy" else s.heads_layer, top_k=10,
                                                     shots=s.fv_shots, splits=tv.make_splits(task, seed=0), return_aie=True))
    layers = "every layer" if s.sweep_layers is None else f"layers={list(s.sweep_layers)}"
    return [Figure("sweep.png", "results.md", f"LTV, Vanilla TV and FV per layer on {s.sweep_task}",
                   f"tv.sweep(model, {s.sweep_task!r}, {'' if s.sweep_layers is None else layers + ', '}fv_shots={s.fv_shots}).plot()"
                   f"  # {layers}", sw.plot(), seconds=t1),
            Figure("compare.png", "results.md", f"the six scenarios x three methods, mean over {len(names)} tasks",
                   f"tv.compare(model, {'tv.tasks.toy_task_names()' if not s.compare_tasks else names}, fv_shots={s.fv_shots}).plot()",
                   cmp.plot(), seconds=t2),
            Figure("aie.png", "results.md", f"the function vector's head AIE on {s.sweep_task}",
                   f"tv.function_vector(model, {s.sweep_task!r}, layer={1 if s.model == 'toy' else s.heads_layer}, top_k=10, "
                   f"shots={s.fv_shots}, return_aie=True)[1].plot()", aie.plot(), seconds=t3)]


def _layers_text(model) -> str:
    n = model.cfg.n_layers
    return f"range({n})" if n <= 8 else f"range(0, {n}, 3)"


def _ltvs(model, task, cache: dict) -> dict:
    """One LTV per layer (every layer up to 8 layers, else every third: the report's rule), trained once."""
    import tvlens as tv

    if "ltvs" not in cache:
        n = model.cfg.n_layers
        layers = list(range(n)) if n <= 8 else sorted(set(range(0, n, 3)) | {n // 4, 3 * n // 4})
        splits = tv.make_splits(task, seed=0)
        cache["ltvs"] = {layer: tv.train_ltv(model, task, layers=[layer], splits=splits, progress=False).vector for layer in layers}
    return cache["ltvs"]


def save_dashboard_data(data, path: Path) -> None:
    """A :class:`tvlens.viz.heads.DashboardData` as JSON (frames in pandas' "split" form); read by docs/hooks.py."""
    def frame(f):
        return None if f is None else json.loads(f.to_json(orient="split", index=False, double_precision=6))

    def rounded(t, digits):  # a tensor as nested lists of rounded floats
        def r(x):
            return [r(y) for y in x] if isinstance(x, list) else round(float(x), digits)
        return r(t.tolist())

    obj = {"title": data.title, "heads": frame(data.heads), "tokens": list(data.tokens),
           "patterns": rounded(data.patterns, 4),  # [layer, head, pos, pos]
           "decoded": [list(t) for t in data.decoded], "decoded_values": rounded(data.decoded_values, 3),
           "ablation": frame(data.ablation), "sinks": frame(data.sinks), "injection_layer": data.injection_layer,
           "notes": list(data.notes)}
    path.write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")


# --- export ----------------------------------------------------------------------------------------

def chromium() -> str | None:
    for c in (os.environ.get("BROWSER_PATH"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
              shutil.which("google-chrome")):
        if c and Path(c).exists():
            return c
    return None


def compress(png: bytes) -> bytes:
    """Quantise to a 256-colour palette (plotly's flat colours survive it) and optimise."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    buf = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def export(figs: list[Figure], out: Path) -> None:
    import plotly.io as pio

    todo = [f for f in figs if f.fig is not None]
    paths = [out / f.file for f in todo]
    heights = [int(f.fig.layout.height or 460) for f in todo]  # the figure's own height where it sets one
    pio.write_images([f.fig for f in todo], paths, format="png", width=WIDTH, height=heights, scale=1)
    for p in paths:
        p.write_bytes(compress(p.read_bytes()))


def screenshot_dashboard(page: Path, png: Path, head: tuple[int, int]) -> float:
    """Open the dashboard, click the heatmap cell of ``head`` (a real mouse click), check the panel, screenshot."""
    from playwright.sync_api import sync_playwright

    t0 = time.perf_counter()
    layer, h = head
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = browser.new_page(viewport={"width": 1100, "height": 900}, device_scale_factor=1)
            tab.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:", "blob:")) else r.abort())
            tab.goto(page.as_uri())
            tab.wait_for_selector("#tvl-heatmap .nsewdrag")
            x, y = cell_center(tab, layer, h)
            tab.mouse.click(x, y)
            tab.wait_for_function(f"document.getElementById('tvl-head-info').textContent.startsWith('layer {layer}, head {h}')")
            tab.mouse.move(5, 5)  # off the plot: no hover label over the cells
            tab.wait_for_timeout(500)
            top = tab.locator("h2").first.bounding_box()
            boxes = [tab.locator(sel).bounding_box() for sel in ("#tvl-pattern", "#tvl-decoded")]
            bottom = max(b["y"] + b["height"] for b in boxes)  # the selected head's panels, side by side or stacked
            clip = {"x": 0, "y": top["y"] - 10, "width": 1100, "height": bottom - top["y"] + 20}
            raw = tab.screenshot(clip=clip, full_page=True)
        finally:
            browser.close()
    png.write_bytes(compress(raw))
    return round(time.perf_counter() - t0, 2)


def cell_center(tab, layer: int, head: int) -> tuple[float, float]:
    """Pixel centre of heatmap cell (layer, head), from plotly's own axis mapping (l2p) of the drawn plot."""
    xy = tab.evaluate("""([layer, head]) => {
        const gd = document.getElementById('tvl-heatmap');
        const fl = gd._fullLayout, box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [box.left + fl.xaxis.l2p(head), box.top + fl.yaxis.l2p(layer)];
    }""", [layer, head])
    return float(xy[0]), float(xy[1])


# --- main ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(SETUPS), default="toy", help="which model's figures (default: the embedded model)")
    ap.add_argument("--only", nargs="+", choices=GROUPS, default=None, help="groups to remake (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)

    browser = chromium()
    if browser is None:
        print("no Chromium binary found (set BROWSER_PATH)", file=sys.stderr)
        return 2
    os.environ.setdefault("BROWSER_PATH", browser)  # kaleido's Chromium
    sys.path.insert(0, str(ROOT))
    import torch

    import tvlens as tv

    torch.set_num_threads(args.threads)
    s = SETUPS[args.model]
    out = HERE / args.model
    out.mkdir(exist_ok=True)
    manifest_path = out / "figures.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"figures": []}
    model, t_load = _timed(lambda: tv.load_model(s.model))
    cache: dict = {}
    runs = {"heads": lambda: heads(model, s, out), "lens": lambda: lens(model, s, out, cache),
            "linear": lambda: linear(model, s, out, cache), "geometry": lambda: geometry(model, s, out),
            "results": lambda: results(model, s, out)}
    figs: list[Figure] = []
    for g in args.only or GROUPS:
        made, t = _timed(runs[g])
        print(f"{g}: {len(made)} figures, {t:.1f} s", flush=True)
        figs += made
    _, t_export = _timed(lambda: export(figs, out))
    print(f"exported {len(figs)} PNGs in {t_export:.1f} s", flush=True)
    new = {f.file for f in figs}
    rows = [r for r in old["figures"] if r["file"] not in new]
    rows += [{"file": f.file, "page": f.page, "what": f.what, "python": f.python, "seconds": f.seconds,
              "bytes": (out / f.file).stat().st_size} for f in figs]
    rows.sort(key=lambda r: r["file"])
    manifest = {"model": s.model, "fingerprint": tv.fingerprint(model), "command": _command(args),
                "torch_threads": args.threads, "load_seconds": t_load, "figures": rows}
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    total = sum(r["bytes"] for r in rows)
    print(f"{len(rows)} images in {out.relative_to(ROOT)}, {total / 1e6:.2f} MB")
    return 0


def _command(args) -> str:
    parts = ["python docs/figures/make.py"]
    if args.model != "toy":
        parts.append(f"--model {args.model}")
    return " ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
