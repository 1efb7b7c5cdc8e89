"""docs/errors.md has a section (symptom, cause, fix) for every error class tvlens defines."""

import re
from pathlib import Path

import tvlens as tv

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _error_classes():
    return [c for c in vars(tv.errors).values()
            if isinstance(c, type) and issubclass(c, tv.errors.TvlensError) and c is not tv.errors.TvlensError]


def test_every_error_has_symptom_cause_and_fix():
    text = (DOCS / "errors.md").read_text()
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M))
    classes = _error_classes()
    assert len(classes) >= 11
    for cls in classes:
        body = sections.get(cls.__name__)
        assert body is not None, f"docs/errors.md lacks a section for {cls.__name__}"
        for part in ("**Symptom.**", "**Cause.**", "**Fix.**"):
            assert part in body, f"{cls.__name__}: no {part}"
        assert f"`{cls.__name__}`" in text.split("\n---\n")[0], f"{cls.__name__} missing from the table"
    assert "\n## TvlensWarning" in text


def test_cli_docs_show_the_json_error_shape():
    text = (DOCS / "cli.md").read_text()
    assert '{"error": {"type": ' in text and '"hint": ' in text and "--debug" in text
