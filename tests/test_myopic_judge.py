"""The myopic judge against hand labels (tests/fixtures/myopic_judge_labels.json) and the task's own responses."""

import json
from pathlib import Path

import pytest

from tvlens.tasks._judge import judge
from tvlens.tasks._myopic import items

ROWS = json.loads((Path(__file__).parent / "fixtures" / "myopic_judge_labels.json").read_text())["rows"]


def _agreement(rows):
    return sum(judge(r["text"], items()[r["item"]]) == r["label"] for r in rows) / len(rows)


def test_fixture_is_big_and_balanced_enough():
    held = [r for r in ROWS if r["split"] == "heldout"]
    assert len(ROWS) >= 100 and len(held) >= 40
    for split in ("tune", "heldout"):
        labels = {r["label"] for r in ROWS if r["split"] == split}
        assert labels == {"sooner", "later", "unclear"}


@pytest.mark.parametrize("split", ["tune", "heldout", None])
def test_agreement_with_hand_labels(split):
    rows = [r for r in ROWS if split is None or r["split"] == split]
    assert _agreement(rows) >= 0.95


def test_generated_responses_are_judged_to_their_side():
    for it in items():
        assert all(judge(" " + r, it) == "sooner" for r in it.sooner_responses), it
        assert all(judge(" " + r, it) == "later" for r in it.later_responses), it


def test_a_wrong_item_changes_the_verdict():
    """The judge reads the item (letters are swapped across items), not only the text."""
    a = next(it for it in items() if it.sooner_letter == "A")
    b = next(it for it in items() if it.sooner_letter == "B")
    assert judge(" Option A.", a) == "sooner" and judge(" Option A.", b) == "later"
