"""The documentation's figures: every image was made by docs/figures/make.py and is shown where it belongs.

No browser and no docs extra needed (this runs in the test suite); the pages themselves are
checked in a browser by tests/test_docs_site.py.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FIGURES = DOCS / "figures"
MAX_TOTAL_BYTES = 5_000_000  # every image of the repository together
MODELS = sorted(p.parent.name for p in FIGURES.glob("*/figures.json"))


def _manifest(model: str) -> dict:
    return json.loads((FIGURES / model / "figures.json").read_text(encoding="utf-8"))


def test_embedded_model_figures_exist():
    assert "toy" in MODELS, "docs/figures/toy/figures.json is missing: run python docs/figures/make.py"


@pytest.mark.parametrize("model", MODELS)
def test_every_image_is_in_the_manifest_and_vice_versa(model):
    listed = {r["file"] for r in _manifest(model)["figures"]}
    on_disk = {p.name for p in (FIGURES / model).glob("*.png")}
    assert listed == on_disk, f"not made by make.py: {sorted(on_disk - listed)}; listed but missing: {sorted(listed - on_disk)}"


@pytest.mark.parametrize("model", MODELS)
def test_every_image_is_shown_on_its_page_with_the_call_that_made_it(model):
    for r in _manifest(model)["figures"]:
        page = (DOCS / r["page"]).read_text(encoding="utf-8")
        ref = f"](figures/{model}/{r['file']})"
        assert ref in page, f"{r['page']} does not show figures/{model}/{r['file']}"
        after = page[page.index(ref):][:2000]
        assert r["python"] in after, f"{r['page']}: the caption of {r['file']} does not quote {r['python']!r} (rerun make.py?)"
        assert "docs/figures/make.py" in after, f"{r['page']}: the caption of {r['file']} does not give the command"


@pytest.mark.parametrize("model", MODELS)
def test_images_are_real_pngs_of_sensible_size(model):
    for p in (FIGURES / model).glob("*.png"):
        head = p.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{p.name} is not a PNG"
        width, height = struct.unpack(">II", head[16:24])
        assert 300 <= width <= 1400 and 200 <= height <= 1600, f"{p.name}: {width}x{height}"
        assert p.stat().st_size > 2_000, f"{p.name}: {p.stat().st_size} bytes, too small to hold a plot"


def test_images_total_under_5_mb():
    skip = {".git", ".venv", "venv", "site", ".cache", "node_modules", "__pycache__", ".pytest_cache"}
    total, n = 0, 0
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]  # build outputs and environments are not the repository's
        for f in files:
            if f.lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")):
                total += os.path.getsize(os.path.join(folder, f))
                n += 1
    assert n >= 10, f"only {n} images found"
    assert total < MAX_TOTAL_BYTES, f"{total / 1e6:.2f} MB in {n} images"


def test_readme_shows_the_dashboard():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_screen = readme[:readme.index("<!-- demo-command -->")]
    assert "](docs/figures/smollm2/dashboard.png)" in first_screen  # the real model's, as a visitor would want
    assert (FIGURES / "smollm2" / "dashboard.png").exists()
