"""Custom tasks from files and datasets: every layout, and a typed error for every malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tvlens.tasks as tasks
from tvlens.errors import TaskFormatError

FIXTURES = Path(__file__).parent / "fixtures"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- the shipped fixtures --------------------------------------------------------------------


def test_csv_fixture():
    t = tasks.from_file(FIXTURES / "custom.csv", template="{x} ->")
    assert t.name == "custom" and t.kind == "generation" and len(t) == 20
    assert t.examples[0].inputs == {"x": "hot"} and t.examples[0].output == "cold"
    assert t.prompt_text(t.examples[1], [t.examples[0]]) == "hot -> cold\ntall ->"
    assert t.source.endswith("custom.csv")


def test_json_fixture_with_name_and_format():
    t = tasks.from_file(FIXTURES / "custom.json", "spell_number", template="{x} =", separator=" ; ")
    assert t.name == "spell_number" and len(t) == 20
    assert t.prompt_text(t.examples[2], t.examples[:2]) == "one = 1 ; two = 2 ; three ="


# --- other layouts -----------------------------------------------------------------------------


def test_json_pairs_and_pairs_object(tmp_path):
    a = tasks.from_file(write(tmp_path / "a.json", json.dumps([["big", "small"], ["up", "down"]])))
    obj = {"description": "opposites", "pairs": [["big", "small"], ["up", "down"]]}
    b = tasks.from_file(write(tmp_path / "b.json", json.dumps(obj)))
    assert a.examples == b.examples and b.description == "opposites"
    assert a.examples[1].inputs == {"x": "up"} and a.examples[1].output == "down"


def test_jsonl_with_custom_fields_and_blank_lines(tmp_path):
    path = write(tmp_path / "q.jsonl", '{"q": "2+2", "a": 4}\n\n{"q": "3+3", "a": "6"}\n')
    t = tasks.from_file(path, input_field="q", output_field="a")
    assert [(e.inputs["x"], e.output) for e in t.examples] == [("2+2", "4"), ("3+3", "6")]


def test_multiple_input_fields(tmp_path):
    path = write(tmp_path / "pairs.csv", "a,b,rel\ncat,kitten,young\ndog,puppy,young\n")
    t = tasks.from_file(path, input_field=("a", "b"), output_field="rel")
    assert t.template == "{a} {b}" and t.prompt_text(t.examples[0]) == "cat kitten"
    t2 = tasks.from_file(path, input_field=["a", "b"], output_field="rel", template="{a} / {b} :")
    assert t2.prompt_text(t2.examples[1]) == "dog / puppy :"


def test_tsv(tmp_path):
    t = tasks.from_file(write(tmp_path / "t.tsv", "input\toutput\na, b\tc\n"))
    assert t.examples[0].inputs == {"x": "a, b"} and t.examples[0].output == "c"


def test_label_words_make_a_classification_task(tmp_path):
    path = write(tmp_path / "sent.csv", "input,output\ngreat,positive\nawful,0\n")
    t = tasks.from_file(path, label_words=["negative", "positive"], template="{x} Sentiment:")
    assert t.kind == "classification" and t.label_words == ("negative", "positive")
    assert [e.output for e in t.examples] == ["positive", "negative"]


def test_from_dataset():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"w": "hot", "o": "cold"}, {"w": "big", "o": "small"}])
    t = tasks.from_dataset(ds, "opp", input_field="w", output_field="o", template="{x} ->")
    assert t.name == "opp" and t.prompt_text(t.examples[1], t.examples[:1]) == "hot -> cold\nbig ->"


def test_from_dataset_class_labels():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": ["fine", "bad"], "label": [1, 0]}, features=features)
    gen = tasks.from_dataset(ds, "s", input_field="text", output_field="label")
    assert [e.output for e in gen.examples] == ["pos", "neg"] and gen.kind == "generation"
    cls = tasks.from_dataset(ds, "s", input_field="text", output_field="label", label_words=["negative", "positive"])
    assert [e.output for e in cls.examples] == ["positive", "negative"] and cls.kind == "classification"


# --- malformed inputs -> TaskFormatError naming file/row and the fix ---------------------------


def test_missing_file(tmp_path):
    with pytest.raises(TaskFormatError, match="not found"):
        tasks.from_file(tmp_path / "absent.json")
    with pytest.raises(TaskFormatError, match="directory"):
        tasks.from_file(tmp_path)


def test_unknown_extension(tmp_path):
    with pytest.raises(TaskFormatError, match=r"\.txt"):
        tasks.from_file(write(tmp_path / "x.txt", "a b"))


@pytest.mark.parametrize(
    ("filename", "text", "pattern"),
    [
        ("bad.json", "[{", "invalid JSON"),
        ("obj.json", '{"examples": []}', "no 'pairs'"),
        ("scalar.json", '"hello"', "expected a JSON list"),
        ("empty.json", "[]", "no examples"),
        ("field.json", '[{"input": "a", "answer": "b"}]', r"row 0: missing field\(s\) \['output'\]"),
        ("triple.json", '[["a", "b", "c"]]', "row 0"),
        ("nested.json", '[{"input": ["a"], "output": "b"}]', "expected text"),
        ("blank.json", '[{"input": "a", "output": "b"}, {"input": "c", "output": "  "}]', "row 1 .*empty"),
        ("null.json", '[{"input": "a", "output": null}]', "NoneType"),
        ("lines.jsonl", '{"input": "a", "output": "b"}\n{"input": \n', "line 2"),
        ("header.csv", "word,opposite\nhot,cold\n", r"header row .* lacks"),
        ("cells.csv", "input,output\nhot,cold,warm\n", "line 2"),
        ("onlyheader.csv", "input,output\n", "no examples"),
    ],
)
def test_malformed_files(tmp_path, filename, text, pattern):
    path = write(tmp_path / filename, text)
    with pytest.raises(TaskFormatError, match=pattern) as info:
        tasks.from_file(path)
    assert filename in str(info.value)


def test_output_not_a_label_word(tmp_path):
    path = write(tmp_path / "s.csv", "input,output\ngreat,positive\nmeh,neutral\n")
    with pytest.raises(TaskFormatError, match="row 1.*'neutral'"):
        tasks.from_file(path, label_words=["negative", "positive"])
    with pytest.raises(TaskFormatError, match="outside"):
        tasks.from_file(write(tmp_path / "i.json", '[{"input": "x", "output": 5}]'), label_words=["a", "b"])


def test_template_field_mismatch(tmp_path):
    with pytest.raises(TaskFormatError, match="template"):
        tasks.from_file(FIXTURES / "custom.csv", template="{word} ->")


def test_from_dataset_errors():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"w": "hot", "o": "cold"}])
    with pytest.raises(TaskFormatError, match=r"no column\(s\) \['output'\]"):
        tasks.from_dataset(ds, "opp", input_field="w", output_field="output")
    with pytest.raises(TaskFormatError, match="DatasetDict"):
        tasks.from_dataset(datasets.DatasetDict({"train": ds}), "opp", input_field="w", output_field="o")
    with pytest.raises(TaskFormatError, match="list"):
        tasks.from_dataset([{"w": "a", "o": "b"}], "opp", input_field="w", output_field="o")  # type: ignore[arg-type]


def test_unknown_format_argument():
    with pytest.raises(TypeError, match="templat"):
        tasks.from_file(FIXTURES / "custom.csv", templat="{x} ->")
