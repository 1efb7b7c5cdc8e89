"""The shipped word-pair tasks (capital, capitalize, antonym) and the function-vectors loader."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

import tvlens.tasks as tasks
from tvlens.errors import TaskFormatError
from tvlens.prompts import make_splits
from tvlens.tasks._wordpairs import WORDPAIR_TASKS, wordpair_task

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tvlens" / "tasks" / "data"
FV_DATA = REPO / ".." / "shared" / "data" / "function_vectors"  # reference files, read only


def pairs(name: str) -> list[tuple[str, str]]:
    t = tasks.get(name)
    return [(e.inputs["x"], e.output) for e in t.examples]


def ascii_fold(s: str) -> str:
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower()


@pytest.mark.parametrize("name", WORDPAIR_TASKS)
def test_registered_generation_task_with_format(name):
    t = tasks.get(name)
    assert t.name == name and t.kind == "generation" and t.label_words is None
    assert (t.template, t.answer_prefix, t.separator) == ("Q: {x}\nA:", " ", "\n\n")  # the qa default
    assert t.template_name == "qa"
    old = tasks.get(name, template="arrow")  # tvlens's format before templates
    assert old.name == f"{name}[arrow]" and (old.template, old.separator) == ("{x} ->", "\n")
    assert tasks.describe(name)


@pytest.mark.parametrize("name", WORDPAIR_TASKS)
def test_files_have_enough_unique_clean_pairs(name):
    raw = json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))
    assert set(raw) == {"description", "pairs"} and raw["description"]
    ps = pairs(name)
    inputs = [i for i, _ in ps]
    assert len(set(inputs)) == len(inputs) >= 100
    for i, o in ps:
        assert i and o and i == i.strip() and o == o.strip()


@pytest.mark.parametrize("name", ["antonym", "capital"])
def test_real_model_lists_are_big_and_consistent(name):
    """Issue 16: >= 400 pairs (so make_splits gives >= 100 test queries), no duplicate inputs,
    no pair that maps a word to itself, and (antonym) no A -> B with B -> C for some C != A."""
    ps = pairs(name)
    assert len(ps) >= 400
    inputs = [i for i, _ in ps]
    assert len(set(inputs)) == len(inputs)
    assert not [i for i, o in ps if i == o]
    assert len(make_splits(tasks.get(name)).test) >= 100
    if name == "antonym":
        d = dict(ps)
        assert not [(a, b, d[b]) for a, b in ps if b in d and d[b] != a]


def test_prompt_format():
    t = tasks.get("capital")
    assert t.prompt_text(t.examples[0]) == "Q: Afghanistan\nA:"
    assert t.prompt_text(t.examples[1], t.examples[:1]) == "Q: Afghanistan\nA: Kabul\n\nQ: Albania\nA:"
    a = tasks.get("capital", template="arrow")
    assert a.prompt_text(a.examples[0]) == "Afghanistan ->"
    assert a.prompt_text(a.examples[1], a.examples[:1]) == "Afghanistan -> Kabul\nAlbania ->"


def test_capital_facts():
    d = dict(pairs("capital"))
    expected = {"France": "Paris", "Japan": "Tokyo", "Germany": "Berlin", "Egypt": "Cairo", "Canada": "Ottawa",
                "Australia": "Canberra", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo"}
    for country, city in expected.items():
        assert d[country] == city
    assert all(country[0].isupper() and city[0].isupper() for country, city in d.items())
    assert sum(" " not in city for city in d.values()) >= 100  # mostly single words


def test_capitalize_is_str_capitalize():
    ps = pairs("capitalize")
    for i, o in ps:
        assert i.islower() and i.isalpha() and o == i.capitalize()


def test_antonym_pairs_differ():
    d = dict(pairs("antonym"))
    for w, a in d.items():
        assert w != a and w.islower() and a.islower()
    for w, a in {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "win": "lose"}.items():
        assert d[w] == a


def test_unknown_wordpair_task():
    with pytest.raises(TaskFormatError):
        wordpair_task("synonym")


# --- the function-vectors file format ------------------------------------------------------------


def test_load_function_vectors_json_tmp(tmp_path):
    path = tmp_path / "english-german.json"
    path.write_text(json.dumps([{"input": "dog", "output": "Hund"}, {"output": "Katze", "input": "cat"}]))
    t = tasks.load_function_vectors_json(path)
    assert t.name == "english-german" and t.kind == "generation"
    assert t.prompt_text(t.examples[1], t.examples[:1]) == "Q: dog\nA: Hund\n\nQ: cat\nA:"
    ta = tasks.load_function_vectors_json(path, template="arrow")
    assert ta.name == "english-german" and ta.template_name == "arrow" and ta.prompt_text(ta.examples[1], ta.examples[:1]) == "dog -> Hund\ncat ->"
    t2 = tasks.load_function_vectors_json(path, "de", template="{x} in German is")
    assert t2.name == "de" and t2.prompt_text(t2.examples[0]) == "dog in German is"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [('{"pairs": []}', "JSON list"), ("[{", "invalid JSON"), ('[{"input": "a"}]', "output")],
)
def test_load_function_vectors_json_malformed(tmp_path, text, pattern):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(TaskFormatError, match=pattern):
        tasks.load_function_vectors_json(path)


def test_load_function_vectors_json_missing(tmp_path):
    with pytest.raises(TaskFormatError, match="not found"):
        tasks.load_function_vectors_json(tmp_path / "absent.json")


@pytest.mark.skipif(not (FV_DATA / "country-capital.json").is_file(), reason="reference data not available")
def test_reference_country_capital_file_loads_and_agrees():
    t = tasks.load_function_vectors_json(FV_DATA / "country-capital.json")
    assert t.name == "country-capital" and len(t) > 100
    theirs = {e.inputs["x"]: e.output for e in t.examples}
    assert theirs["France"] == "Paris"
    ours = dict(pairs("capital"))
    common = set(ours) & set(theirs)
    agree = sum(ascii_fold(ours[c]) == ascii_fold(theirs[c]) for c in common)
    assert len(common) >= 100 and agree >= 0.9 * len(common)  # spelling variants aside


@pytest.mark.skipif(not (FV_DATA / "antonym.json").is_file(), reason="reference data not available")
def test_reference_antonym_and_capitalize_files_load():
    for name in ("antonym", "capitalize"):
        t = tasks.load_function_vectors_json(FV_DATA / f"{name}.json")
        assert len(t) > 100 and t.kind == "generation"
