"""Output paths are checked before any work (issue 22): a parent that is a file, a folder that is
not writable, a folder where a file is expected -> OutputPathError at once, with no model run
(a forward-pass counter on HookedTransformer and its blocks proves it) and no file changed."""

from __future__ import annotations

import json
import os

import pytest
import torch

import tvlens as tv
from tvlens.errors import OutputPathError

CAN_CHMOD = hasattr(os, "geteuid") and os.geteuid() != 0  # root writes anywhere


@pytest.fixture
def forwards(monkeypatch):
    """Counts every forward of any model and of any transformer block, on the backend the installation offers."""
    from tvlens import _backend

    if _backend.HAS_HOOKED:
        from transformer_lens import HookedTransformer as Model
        from transformer_lens.components import TransformerBlock as Block
    else:  # TransformerLens 4.x
        from transformer_lens.model_bridge import TransformerBridge as Model
        from transformer_lens.model_bridge.generalized_components.block import BlockBridge as Block

    calls = {"n": 0}
    for cls in (Model, Block):
        orig = cls.forward

        def counted(self, *a, _orig=orig, **k):
            calls["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(cls, "forward", counted)
    return calls


@pytest.fixture
def places(tmp_path):
    """(a regular file, a read-only folder, a writable folder)."""
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    yield f, ro, tmp_path
    os.chmod(ro, 0o755)
    assert f.read_text() == "keep me" and not list(ro.iterdir())


def _bad_paths(places, name="page.html"):
    f, ro, _ = places
    out = [("under a file", f / name, "is a file, not a folder"), ("deep under a file", f / "sub" / name, "is a file")]
    if CAN_CHMOD:
        out.append(("read-only folder", ro / name, "not writable"))
    return out


CLI = {
    "analyze saliency --html": lambda p: ["analyze", "saliency", "--task", "toy/antonym", "--n", "4", "--html", str(p)],
    "analyze heads --html": lambda p: ["analyze", "heads", "--task", "toy/antonym", "--n", "4", "--html", str(p)],
    "analyze lens --html": lambda p: ["analyze", "lens", "--task", "toy/antonym", "--n-test", "4", "--html", str(p)],
    "analyze lens --save-vectors": lambda p: ["analyze", "lens", "--task", "toy/antonym", "--n-test", "4", "--save-vectors", str(p)],
    "analyze geometry --html": lambda p: ["analyze", "geometry", "--html", str(p)],
    "analyze geometry --save-vectors": lambda p: ["analyze", "geometry", "--save-vectors", str(p)],
    "sweep --html": lambda p: ["sweep", "--task", "toy/antonym", "--html", str(p)],
    "compare --html": lambda p: ["compare", "--html", str(p)],
    "train --out": lambda p: ["train", "--task", "toy/antonym", "--layer", "2", "--out", str(p)],
    "report out": lambda p: ["report", "--task", "toy/antonym", str(p)],
    "toy-train --out": lambda p: ["toy-train", "--out", str(p), "--steps", "1"],
}


@pytest.mark.parametrize("cmd", list(CLI))
def test_cli_output_paths_fail_before_any_model_runs(cmd, places, forwards, capsys):
    from tvlens.cli import main

    for why, path, match in _bad_paths(places):
        forwards["n"] = 0
        assert main([*CLI[cmd](path), "--json"]) == 2, why
        err = json.loads(capsys.readouterr().out)["error"]
        assert err["type"] == "OutputPathError" and match in err["message"], (why, err)
        assert forwards["n"] == 0, f"{cmd} {why}: {forwards['n']} forward passes before the path error"


def test_a_folder_given_as_a_file_output(places, forwards, capsys):
    from tvlens.cli import main

    _, _, d = places
    (d / "runs").mkdir()
    assert main(["train", "--task", "toy/antonym", "--out", str(d / "runs"), "--overwrite", "--json"]) == 2
    err = json.loads(capsys.readouterr().out)["error"]
    assert err["type"] == "OutputPathError" and "is a folder" in err["message"]
    assert forwards["n"] == 0


def test_result_save_and_dashboard_check_the_path_first(places, forwards, toy_model, tmp_path):
    from tvlens._result import ConditionAccuracy

    r = ConditionAccuracy("t", ("a",), torch.tensor([1]), 2)
    for why, path, match in _bad_paths(places, "r.json"):
        with pytest.raises(OutputPathError, match=match):
            r.save(path)
    v = tv.TaskVector(torch.randn(1, toy_model.cfg.d_model), (tv.Site(2, -1),), task="toy/antonym",
                      model_fingerprint=tv.fingerprint(toy_model))
    c = tv.circuit(toy_model, v, "toy/antonym", n=4)
    forwards["n"] = 0
    for why, path, match in _bad_paths(places):
        with pytest.raises(OutputPathError, match=match):
            c.dashboard(path)
        with pytest.raises(OutputPathError, match=match):
            tv.viz.report.write_report(toy_model, "toy/antonym", path, n=4) if hasattr(tv, "viz") else None
    assert forwards["n"] == 0


def test_missing_folders_are_still_made(tmp_path):
    from tvlens._result import ConditionAccuracy

    r = ConditionAccuracy("t", ("a",), torch.tensor([1]), 2)
    p = r.save(tmp_path / "new" / "deeper" / "r.json")
    assert ConditionAccuracy.load(p).accuracies == {"a": 0.5}


def test_report_text_does_not_print_empty_nan_for_sections_that_succeeded(tmp_path, monkeypatch, capsys, toy_model):
    """pandas 3 turns None into NaN in a string column holding another section's error: the text said 'empty: nan'."""
    import tvlens.viz.report as vr
    from tvlens._result import ConditionAccuracy
    from tvlens.cli import main

    ok = ConditionAccuracy("t", ("a",), torch.tensor([1]), 2)

    def fake_build(model, task, **kw):
        return vr.Report("toy", "fp", "toy/antonym", 2, (
            vr.ReportSection("good", "Good", "Heads", "", (ok,), 0.1, None),
            vr.ReportSection("bad", "Bad", "Heads", "", (), 0.1, "ConfigError: broken")))

    monkeypatch.setattr(vr, "build_report", fake_build)
    monkeypatch.setattr(vr, "render", lambda rep: "<html></html>")
    assert main(["report", "--task", "toy/antonym", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "empty: ConfigError: broken" in out and "1 result(s)" in out
    assert main(["report", "--task", "toy/antonym", str(tmp_path / "r2.html"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert [s["error"] for s in doc["sections"]] == [None, "ConfigError: broken"]
    rep = fake_build(None, None)
    assert list(rep.to_frame()["error"]) == [None, "ConfigError: broken"]
