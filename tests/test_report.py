"""The report page: section registry, failures kept to their section, an offline page with a table
of contents, the CLI, and a headless Chromium render in which every section's plot is drawn."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest
import torch

from tvlens._result import Result
from tvlens.viz import report as rp


@dataclass(frozen=True, eq=False, repr=False)
class _Dummy(Result):
    name: str
    values: torch.Tensor

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"i": range(len(self.values)), "value": self.values.tolist()})

    def plot(self):
        import plotly.graph_objects as go

        return go.Figure(go.Bar(x=list(range(len(self.values))), y=self.values.tolist()))


@pytest.fixture
def extra_sections(monkeypatch):
    """Two test sections (one working, one failing) added for the duration of a test."""
    rp._register_builtin()
    monkeypatch.setattr(rp, "SECTIONS", dict(rp.SECTIONS))
    rp.register_section("dummy", "A dummy section", "Geometry", lambda ctx: [_Dummy("d", torch.arange(3.0))], "three bars")

    def boom(ctx):
        raise RuntimeError("this analysis broke")

    rp.register_section("broken", "A broken section", "Heads", boom)
    return rp


@pytest.fixture(scope="module")
def toy_report(toy_model):
    """Every section (baselines, heads, lens and linearity, geometry) on the embedded model."""
    return rp.build_report(toy_model, "toy/antonym", progress=False)


def test_report_sections_and_results(toy_report):
    rep = toy_report
    from tvlens.analysis import analyses

    builtin = ["claims", "icl", "ltv", "sweep", "compare", "ov", "saliency", "ablation", "sinks", "lens", "decoded", "linear", "rotation", "geometry"]
    keys = [s.key for s in rep.sections]
    assert [k for k in keys if k in builtin] == builtin  # in this order, whatever analyses were added
    assert set(keys) - set(builtin) == {a.name for a in analyses() if a.report} - set(builtin)  # sections come from the registry
    assert all(s.ok and s.results for s in rep.sections), {s.key: s.error for s in rep.sections if not s.ok}
    by = {s.key: s for s in rep.sections}
    assert len(by["ablation"].results) == 3 and {r.kind for r in by["ablation"].results} == {"zero", "mean", "path"}
    geo = {type(r).__name__ for r in by["geometry"].results}
    assert {"CosineMatrix", "Transfer", "Composition"} <= geo  # toy/antonym is a part of toy/capitalize+antonym
    cm = next(r for r in by["geometry"].results if type(r).__name__ == "CosineMatrix")
    assert cm.tasks[:3] == ("toy/antonym",) * 3 and cm.within_mean > 0.9
    df = rep.to_frame()
    assert list(df.key) == keys and df.error.isna().all()
    assert rep.layer == 2 and "toy/antonym" in repr(rep)
    # the claims section computes the shared analyses; the sections after it take them from the cache and say so
    assert by["claims"].reused_from == () and by["icl"].reused_from == ()  # icl shares nothing
    for key in ("ltv", "sweep", "compare", "ablation", "decoded", "rotation", "geometry"):
        assert [k for k, _ in by[key].reused_from] == ["claims"] and by[key].reused_seconds > 0, (key, by[key].reused_from)
    assert all(s.reused_seconds <= by["claims"].seconds + 0.01 for s in rep.sections)  # a part of the time it took there


def test_page_is_offline_with_contents(toy_report, tmp_path):
    page = toy_report.write(tmp_path / "r.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing fetched
    assert page.count("plotly.js v") <= 2 and len(page) > 3_000_000  # plotly.js inlined (once)
    for key in (s.key for s in toy_report.sections):
        assert f'href="#{key}"' in page and f'<section id="{key}"' in page


def test_failing_and_missing_sections_are_kept_apart(extra_sections, toy_model, tmp_path):
    rep = rp.build_report(toy_model, "toy/antonym", sections=["dummy", "broken", "icl"], progress=False)
    by = {s.key: s for s in rep.sections}
    assert by["dummy"].ok and by["icl"].ok
    assert not by["broken"].ok and "RuntimeError: this analysis broke" in by["broken"].error
    page = rep.write(tmp_path / "r.html").read_text()
    assert "this analysis broke" in page and "(empty)" in page and "three bars" in page


def test_a_registered_analysis_is_a_section(monkeypatch, toy_model):
    """A new analysis declared in the registry gets its section without any edit to the report."""
    from dataclasses import dataclass

    from tvlens.analysis import Analysis, Options, analyses, register_analysis, unregister_analysis

    @dataclass(frozen=True)
    class NoOptions(Options):
        pass

    analyses()  # the built-in ones first
    monkeypatch.setattr(rp, "SECTIONS", {})  # rebuilt from the registry
    register_analysis(Analysis("dummy_registered", NoOptions, lambda ctx, opts: _Dummy(ctx.task.name, torch.arange(2.0)),
                               _Dummy, "A registered dummy", "Geometry", "from the registry"))
    try:
        rep = rp.build_report(toy_model, "toy/antonym", sections=["dummy_registered"], progress=False)
    finally:
        unregister_analysis("dummy_registered")
    (sec,) = rep.sections
    assert sec.ok and sec.title == "A registered dummy" and sec.group == "Geometry" and sec.results[0].name == "toy/antonym"


def test_bad_arguments(toy_model):
    from tvlens.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown report section"):
        rp.build_report(toy_model, "toy/antonym", sections=["nope"], progress=False)
    with pytest.raises(ConfigError, match="outside the model's layers"):
        rp.build_report(toy_model, "toy/antonym", sections=["icl"], layer=99, progress=False)
    with pytest.raises(ConfigError, match="not saved as JSON"):
        rp.Report("m", "fp", "t", 0, ()).to_json()


def test_cli_report(tmp_path, capsys):
    from tvlens.cli import main

    out = tmp_path / "report.html"
    rc = main(["report", "--task", "antonym", "--sections", "icl", "ltv", "--json", str(out)])
    payload = json.loads(capsys.readouterr().out)
    assert rc == 0, payload
    assert payload["task"] == "toy/antonym" and [s["key"] for s in payload["sections"]] == ["icl", "ltv"]
    assert out.is_file()
    rc = main(["report", "--task", "antonym", "--sections", "icl", "--json", str(out)])  # exists: refused
    assert rc == 2 and json.loads(capsys.readouterr().out)["error"]["type"] == "OutputExistsError"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary to render the page")
def test_every_section_plot_renders_in_chromium(toy_report, tmp_path):
    """Headless Chromium runs the page's scripts; every result's plot must be drawn (an SVG plot)."""
    path = toy_report.write(tmp_path / "r.html")
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=8000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    assert "</html>" in dom, "chromium produced no DOM"
    for s in toy_report.sections:
        m = re.search(rf'<section id="{s.key}".*?</section>', dom, re.S)
        assert m, f"section {s.key} missing from the rendered page"
        drawn = m.group(0).count('class="main-svg"')
        assert drawn >= len(s.results), f"section {s.key}: {drawn} plot layers drawn for {len(s.results)} results"
        assert m.group(0).count("plot-container") >= len(s.results)


def test_the_first_section_is_the_claims_table_with_the_verdicts_of_tv_claims(toy_report, toy_model, tmp_path):
    import tvlens as tv

    first = toy_report.sections[0]
    assert first.key == "claims" and first.ok, first.error
    (table,) = first.results
    alone = tv.claims(toy_model, ["toy/antonym"], layer=toy_report.layer, progress=False)  # the same inputs, a fresh context
    assert [r["key"] for r in table.rows] == [r["key"] for r in alone.rows]
    assert [r["verdict"] for r in table.rows] == [r["verdict"] for r in alone.rows]
    for a, b in zip(table.rows, alone.rows):
        assert (a["measured"] is None) == (b["measured"] is None), a["key"]
        if a["measured"] is not None:
            assert a["measured"] == pytest.approx(b["measured"], abs=1e-6), a["key"]
    page = toy_report.write(tmp_path / "r.html").read_text()
    assert page.index('<section id="claims"') < min(page.index(f'<section id="{s.key}"') for s in toy_report.sections[1:])


def test_the_claims_section_escapes_user_text(toy_model, tmp_path, monkeypatch):
    import dataclasses

    import tvlens._claims as claims_mod
    from tvlens.tasks import get

    monkeypatch.setattr(claims_mod, "CLAIMS", {"one_pass_saliency": claims_mod.CLAIMS["one_pass_saliency"]})  # one cheap row
    odd = dataclasses.replace(get("toy/antonym"), name="<script>x</script>")  # a user-named task
    rep = rp.build_report(toy_model, odd, sections=["claims"], progress=False)
    assert rep.sections[0].ok, rep.sections[0].error
    (table,) = rep.sections[0].results
    assert "<script>x</script>" in table.rows[0]["command"]  # the user's name reached the table
    page = rep.write(tmp_path / "e.html").read_text()
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page


def test_a_section_names_the_earlier_section_whose_cached_results_it_reused(toy_model, tmp_path, monkeypatch):
    """The claims section trains the LTV and runs the saliency analysis; the ltv and saliency sections take both from the
    shared cache (about 0 s of their own) and name the claims section with the seconds the work took there."""
    import tvlens._claims as claims_mod

    monkeypatch.setattr(claims_mod, "CLAIMS", {"one_pass_saliency": claims_mod.CLAIMS["one_pass_saliency"]})  # one cheap row
    rep = rp.build_report(toy_model, "toy/antonym", sections=["claims", "ltv", "saliency"], n=6, progress=False)
    claims, ltv, sal = rep.sections
    assert all(s.ok for s in rep.sections), [s.error for s in rep.sections]
    assert claims.reused_from == () and claims.reused_seconds == 0.0  # it computed them
    assert [k for k, _ in ltv.reused_from] == ["claims"] and [k for k, _ in sal.reused_from] == ["claims"]
    assert 0 < ltv.reused_seconds <= claims.seconds + 0.01
    # the saliency analysis trained the LTV inside its own compute: its seconds hold the LTV's, counted once
    assert ltv.reused_seconds <= sal.reused_seconds <= claims.seconds + 0.01
    df = rep.to_frame()
    assert list(df.reused_seconds) == [0.0, ltv.reused_seconds, sal.reused_seconds]
    assert list(df.reused_from) == [{}, dict(ltv.reused_from), dict(sal.reused_from)]
    page = rep.write(tmp_path / "r.html").read_text()
    notes = re.findall(r'<p class="meta">([^<]*(?:<a [^>]*>[^<]*</a>[^<]*)?)</p></section>', page)
    assert len(notes) == 3 and "reused" not in notes[0] and notes[0].endswith(" s")
    assert all('computed earlier by the <a href="#claims">claims</a> section' in n and "of that section's time" in n
               for n in notes[1:]), notes


def test_a_section_reuses_an_earlier_non_claims_section(toy_model):
    """Without the claims section: the ltv section trains the LTV, the heads sections after it reuse it."""
    rep = rp.build_report(toy_model, "toy/antonym", sections=["ltv", "saliency", "ov"], n=6, progress=False)
    ltv, sal, ov = rep.sections
    assert all(s.ok for s in rep.sections), [s.error for s in rep.sections]
    assert ltv.reused_from == () and ltv.seconds > 0
    for s in (sal, ov):
        assert [k for k, _ in s.reused_from] == ["ltv"] and 0 < s.reused_seconds <= ltv.seconds + 0.01, s


def test_cli_report_json_names_reused_sections(tmp_path, capsys):
    from tvlens.cli import main

    out = tmp_path / "report.html"
    rc = main(["report", "--task", "antonym", "--sections", "ltv", "saliency", "--n", "6", "--json", str(out)])
    payload = json.loads(capsys.readouterr().out)
    assert rc == 0, payload
    ltv, sal = payload["sections"]
    assert {"key", "title", "group", "results", "seconds", "error", "reused_seconds", "reused_from"} <= set(sal)
    assert ltv["reused_seconds"] == 0.0 and ltv["reused_from"] == {}
    assert list(sal["reused_from"]) == ["ltv"] and sal["reused_seconds"] == sal["reused_from"]["ltv"] > 0
