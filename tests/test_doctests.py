"""The ``>>>`` examples in tvlens docstrings run, on the embedded model, from the repository root."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import tvlens

ROOT = Path(__file__).resolve().parent.parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    out = []
    names = ["tvlens"] + [m.name for m in pkgutil.walk_packages(tvlens.__path__, "tvlens.")]
    for name in sorted(names):
        if name.startswith("tvlens.cli.__main__") or name == "tvlens.__main__":
            continue  # running these modules' import starts the CLI
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            if test.examples:
                out.append(pytest.param(test, id=test.name))
    return out


EXAMPLES = _examples()


def test_the_examples_were_found():
    names = {p.values[0].name for p in EXAMPLES}
    assert {"tvlens.steer", "tvlens.evaluate", "tvlens._hooks", "tvlens._result"} <= names


@pytest.mark.parametrize("test", EXAMPLES)
def test_docstring_examples(test, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples read tests/fixtures/... relative to the repository root
    if all(ex.options.get(doctest.SKIP) for ex in test.examples):
        pytest.skip("every example of this docstring is marked +SKIP")
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    failures: list[str] = []
    runner.run(test, out=failures.append, clear_globs=True)
    assert runner.failures == 0, "".join(failures)


def test_the_interventions_page_runs(monkeypatch):
    """docs/interventions.md: its python blocks, in order, run on the embedded model."""
    import re

    monkeypatch.chdir(ROOT)
    text = (ROOT / "docs" / "interventions.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 6
    scope: dict = {}
    exec(compile("\n".join(blocks), "docs/interventions.md", "exec"), scope)
    assert not scope["steered"].equal(scope["run"]())  # the page's edits do something
