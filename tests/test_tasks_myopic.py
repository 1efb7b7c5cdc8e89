"""The generated now-or-later task (``myopic``): seeded, varied, multi-token, teacher-forced whole."""

import collections

import tvlens as tv
from tvlens.tasks._myopic import get_task, items


def test_items_are_seeded_distinct_and_varied():
    a, b = items(), items()
    assert a == b and len(a) == 300 and len({it.question for it in a}) == 300
    assert items(50, seed=3) != a[:50]
    letters = collections.Counter(it.sooner_letter for it in a)
    assert min(letters.values()) > 100  # option order is swapped, not fixed
    assert len({it.question.split("\n")[0].split("(A)")[0] for it in a}) >= 6  # several stems
    assert len({it.delay.split()[-1].rstrip("s") for it in a}) == 4  # days, weeks, months, years


def test_responses_commit_to_their_option():
    for it in items():
        assert it.sooner_letter != it.later_letter
        assert float(it.later_amount.strip("$£€").split()[0]) > float(it.sooner_amount.strip("$£€").split()[0])
        for r in it.sooner_responses:
            assert it.sooner_amount in r or f"({it.sooner_letter})" in r or f" {it.sooner_letter}" in r
        for r in it.later_responses:
            assert it.later_amount in r or f"({it.later_letter})" in r


def test_task_targets_are_sooner_responses_and_registered():
    t = tv.tasks.get("myopic")
    assert t is tv.tasks.get("myopic") and t.kind == "generation" and len(t) == 300
    for ex, it in zip(t.examples, items()):
        assert ex.inputs["x"] == it.question and ex.output in it.sooner_responses
    assert get_task().examples == t.examples
