"""`tvlens sweep`, `tvlens compare` and the demo's baseline columns: JSON shapes and the offline HTML page."""

import json
import re

from tvlens.cli._main import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _offline(page: str) -> None:
    assert "<script" in page and "Plotly" in page  # plotly.js inlined ...
    assert page.count("plotly.js v") <= 2  # ... once (its banner), not per figure
    assert not re.search(r"<script[^>]*\bsrc=", page)  # ... and nothing fetched


def test_sweep_json_and_html(capsys, tmp_path):
    page = tmp_path / "sweep.html"
    code, out, _ = _run(capsys, "sweep", "--task", "toy/antonym", "--layers", "1", "2", "--methods", "vanilla_tv", "fv",
                        "--json", "--html", str(page))
    assert code == 0, out
    p = json.loads(out)
    assert p["layers"] == [1, 2] and set(p["methods"]) == {"vanilla_tv", "fv"}
    assert all(len(v) == 2 and all(isinstance(x, (int, float)) for x in v) for v in p["methods"].values())
    assert isinstance(p["zero_shot"], float) and isinstance(p["icl"], float) and p["icl"] > p["zero_shot"]
    assert p["methods"]["fv"][0] > p["zero_shot"]  # the FV steers antonyms at layer 1 on the toy model
    _offline(page.read_text())


def test_compare_json_fills_every_cell(capsys, tmp_path):
    page = tmp_path / "compare.html"
    code, out, _ = _run(capsys, "compare", "--tasks", "toy/antonym", "--json", "--html", str(page))
    assert code == 0
    p = json.loads(out)
    scen = ["baseline", "p4", "more_positions", "more_layers", "both", "icl_prompts"]
    assert p["scenarios"] == scen and set(p["methods"]) == {"vanilla_tv", "fv", "ltv"}
    for m in p["methods"].values():
        assert list(m) == scen and all(isinstance(x, (int, float)) for x in m.values())
    assert set(p["per_task"]) == {"toy/antonym"} and p["methods_ci95"]["ltv"]["baseline"][0] <= p["methods"]["ltv"]["baseline"]
    page_text = page.read_text()
    _offline(page_text)
    assert "Vanilla TV" in page_text and "toy/antonym" in page_text


def test_demo_has_vanilla_and_fv_columns(capsys):
    code, out, _ = _run(capsys, "demo", "--tasks", "toy/antonym", "--shots", "1", "--no-ltv", "--json")
    assert code == 0
    row = json.loads(out)["tasks"][0]
    assert 0 <= row["vanilla_tv"] <= 1 and 0 <= row["fv"] <= 1 and row["fv_layer"] == 2
    assert row["fv_ci95"][0] <= row["fv"] <= row["fv_ci95"][1]
    code, out, _ = _run(capsys, "demo", "--tasks", "toy/antonym", "--shots", "1", "--no-ltv")
    assert "VanTV" in out and "FV" in out
