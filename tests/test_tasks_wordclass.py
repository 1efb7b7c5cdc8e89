"""The two-label word tasks country_or_city and animal_or_food: labels, sizes, splits, registry and CLI names."""

from __future__ import annotations

from collections import Counter

import pytest

import tvlens as tv
from tvlens.tasks._wordclass import WORDCLASS_TASKS, _countries

LABELS = {"country_or_city": ("country", "city"), "animal_or_food": ("animal", "food")}


@pytest.mark.parametrize("name", WORDCLASS_TASKS)
def test_registered_two_label_tasks_with_enough_items(name):
    assert name in tv.tasks.names()
    t = tv.tasks.get(name)
    assert t.kind == "classification" and t.label_words == LABELS[name]
    counts = Counter(e.output for e in t.examples)
    assert set(counts) == set(LABELS[name]) and min(counts.values()) >= 60
    assert len({e.inputs["x"] for e in t.examples}) == len(t)  # one label per input
    assert t.prompt_text(t.examples[0]).endswith(" ->")


@pytest.mark.parametrize("name", WORDCLASS_TASKS)
def test_splits_are_balanced_and_disjoint(name):
    s = tv.make_splits(tv.tasks.get(name), seed=0)
    parts = [s.demo, s.train, s.val, s.test]
    assert min(len(p) for p in parts) >= 20
    inputs = [{e.inputs["x"] for e in p} for p in parts]
    assert sum(len(i) for i in inputs) == len(set().union(*inputs))
    both = Counter(e.output for p in parts for e in p)
    assert both[LABELS[name][0]] == both[LABELS[name][1]]  # balanced by label
    ps = tv.make_prompts(s, "test", k=2, seed=0, n=10)
    assert len(ps) == 10


def test_country_or_city_labels():
    t = tv.tasks.get("country_or_city")
    label = {e.inputs["x"]: e.output for e in t.examples}
    assert label["France"] == "country" and label["Paris"] == "city" and label["Sacramento"] == "city"
    assert "California" not in label  # regions are neither label
    cap = tv.tasks.get("capital")
    countries = _countries([(e.inputs["x"], e.output) for e in cap.examples])
    assert countries[-1][0] == "Zimbabwe" and len(countries) >= 150


def test_labels_are_single_tokens_on_smollm2(smollm2):
    from tvlens.analysis.lens import answer_token_ids

    for name, words in LABELS.items():
        for w in words:
            assert len(smollm2.tokenizer.encode(" " + w, add_special_tokens=False)) == 1
        ids = answer_token_ids(smollm2, tv.make_prompts(tv.make_splits(tv.tasks.get(name), seed=0), "test", k=0, n=4))
        assert ids.shape == (2,)  # the classification machinery finds one distinct id per label word


def test_cli_task_name(capsys):
    from tvlens.cli._main import main

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "country_or_city" in out and "animal_or_food" in out
