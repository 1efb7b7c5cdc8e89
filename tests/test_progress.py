"""One progress bar per command: inner loops become its stages; outside a command they are plain tqdm bars."""

import io
import json

import pytest

from tvlens import _progress


def test_outside_a_command_a_loop_gets_its_own_tqdm_bar():
    from tqdm.auto import tqdm

    b = _progress.bar(range(3), desc="alone", disable=True)
    assert isinstance(b, tqdm) and list(b) == [0, 1, 2]
    assert _progress.current() is None


def test_nested_stages_move_one_fraction_and_name_the_stage():
    with _progress.command("t", enabled=False) as cmd:
        seen = []
        for _ in _progress.bar(["a", "b"], desc="sections"):
            with _progress.bar(total=4, desc="ltv", disable=True) as inner:  # disable does not hide a stage
                for _ in range(4):
                    seen.append(round(cmd.fraction, 4))
                    inner.update(1)
                inner.set_postfix(loss="0.5")
                text = cmd.stage_text
        assert _progress.current() is cmd
    assert _progress.current() is None
    assert seen == [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875]  # monotone, each inner step an eighth
    assert text == "sections 1/2 › ltv 4/4 (loss=0.5)"
    assert cmd.stack == []


def test_a_loop_left_by_an_exception_closes_its_stages():
    with _progress.command("t", enabled=False) as cmd:
        with pytest.raises(RuntimeError):
            for _ in _progress.bar(range(3), desc="outer"):
                _progress.bar(total=5, desc="inner").update(2)  # never closed by its loop
                raise RuntimeError("boom")
        assert cmd.stack == []


def test_shown_bar_reports_stage_and_eta(monkeypatch):
    # an enabled command bar writes one line with the percentage, the ETA and the current stage
    import sys

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(_progress, "_MIN_INTERVAL", 0.0)  # draw every update
    with _progress.command("tvlens x", enabled=True):
        for _ in _progress.bar(range(2), desc="layers"):
            with _progress.bar(total=2, desc="ltv capitalize") as b:
                b.update(1)
    out = err.getvalue()
    assert "tvlens x" in out and "layers 1/2 › ltv capitalize 1/2" in out and "75%" in out and "done" in out


def test_json_command_keeps_stdout_pure_json(capsys):
    from tvlens.cli import main

    assert main(["tasks", "--json"]) == 0
    json.loads(capsys.readouterr().out)


def test_redraws_are_rate_limited(monkeypatch):
    import sys

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with _progress.command("tvlens x", enabled=True):
        with _progress.bar(total=10_000, desc="steps") as b:
            for _ in range(10_000):
                b.update(1)
    assert err.getvalue().count("\r") < 100  # not one redraw per step
