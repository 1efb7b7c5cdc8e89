"""The paper's classification tasks (SST-2, TREC, SNLI, RTE): local fixtures and offline errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tvlens.tasks as tasks
from tvlens.errors import DatasetUnavailableError, TaskFormatError, TvlensError
from tvlens import _hub
from tvlens.tasks import _hf

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> Path:
    return FIXTURES / f"{name}.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- fixtures load with the paper's templates and label words ---------------------------------


def test_sst2_fixture_prompt_and_labels():
    t = tasks.load_hf_task("sst2", source=fixture("sst2"))
    assert t.name == "sst2" and t.kind == "classification" and len(t) == 20
    assert t.template == "{x} Sentiment:" and t.label_words == ("negative", "positive")
    assert t.answer_prefix == " " and t.separator == "\n"
    assert t.examples[0].output == "positive" and t.examples[1].output == "negative"
    assert t.prompt_text(t.examples[1], [t.examples[0]]) == (
        "a warm , funny little film that earns every laugh Sentiment: positive\n"
        "the plot drags and the jokes land with a thud Sentiment:"
    )


def test_trec_fixture_coarse_labels_in_order():
    t = tasks.load_hf_task("trec", source=fixture("trec"))
    assert t.label_words == ("abbreviation", "entity", "description", "human", "location", "number")
    assert t.template == "Question: {x} Type:"
    assert {e.output for e in t.examples} == set(t.label_words)
    by_text = {e.inputs["x"]: e.output for e in t.examples}
    assert by_text["Why is the sky blue ?"] == "description"
    assert by_text["Who painted the ceiling of the chapel ?"] == "human"
    assert by_text["Where is the largest desert in the world ?"] == "location"
    assert by_text["How many legs does a spider have ?"] == "number"
    assert t.prompt_text(t.examples[0]) == "Question: What does the abbreviation NASA stand for ? Type:"


def test_snli_fixture_drops_unlabelled_rows_and_formats_pairs():
    t = tasks.load_hf_task("snli", source=fixture("snli"))
    assert len(t) == 19  # one row has label -1
    assert t.label_words == ("true", "maybe", "false")
    assert [e.output for e in t.examples[:3]] == ["true", "maybe", "false"]
    assert t.prompt_text(t.examples[2], t.examples[:1]) == (
        "The question is: A man is riding a red bicycle down a hill. ? The answer A person is on a bike. true\n"
        "The question is: A man is riding a red bicycle down a hill. ? The answer The man is sleeping in bed."
    )


def test_rte_fixture_glue_fields():
    t = tasks.load_hf_task("rte", source=fixture("rte"))
    assert t.label_words == ("true", "false") and len(t) == 20
    first = t.examples[0]
    assert first.inputs == {
        "premise": "The town library reopened on Monday after a year of repairs paid for by local donors.",
        "hypothesis": "The library was closed for repairs.",
    }
    assert first.output == "true" and t.examples[1].output == "false"
    assert t.prompt_text(first) == (
        "The question is: The town library reopened on Monday after a year of repairs paid for by local "
        "donors. ? The answer The library was closed for repairs."
    )


def test_max_examples_is_a_seeded_subset():
    a = tasks.load_hf_task("sst2", source=fixture("sst2"), max_examples=5, seed=1)
    b = tasks.load_hf_task("sst2", source=fixture("sst2"), max_examples=5, seed=1)
    full = tasks.load_hf_task("sst2", source=fixture("sst2"))
    assert len(a) == 5 and a.examples == b.examples
    assert set(a.examples) <= set(full.examples)
    with pytest.raises(TaskFormatError):
        tasks.load_hf_task("sst2", source=fixture("sst2"), max_examples=0)


def test_dataset_source():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"sentence": "great", "label": 1}, {"sentence": "awful", "label": 0}])
    t = tasks.load_hf_task("sst2", source=ds)
    assert [e.output for e in t.examples] == ["positive", "negative"]
    with pytest.raises(TaskFormatError, match="DatasetDict"):
        tasks.load_hf_task("sst2", source=datasets.DatasetDict({"train": ds}))


# --- the simpler schema and label given as words ------------------------------------------------


def test_simple_schema_with_label_words(tmp_path):
    path = write_jsonl(
        tmp_path / "snli_simple.jsonl",
        [
            {"premise": "A cat sleeps.", "hypothesis": "An animal rests.", "label": "true"},
            {"premise": "A cat sleeps.", "hypothesis": "The cat is black.", "label": "neutral"},
            {"premise": "A cat sleeps.", "hypothesis": "The cat runs.", "label": "2"},
        ],
    )
    t = tasks.load_hf_task("snli", source=path)
    assert [e.output for e in t.examples] == ["true", "maybe", "false"]


def test_simple_text_schema_csv(tmp_path):
    path = tmp_path / "sst2.csv"
    path.write_text("text,label\nlovely film,positive\nboring film,0\n")
    t = tasks.load_hf_task("sst2", source=path)
    got = [(e.inputs["x"], e.output) for e in t.examples]
    assert got == [("lovely film", "positive"), ("boring film", "negative")]


def test_parquet_with_class_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "trec.parquet"
    rows = [{"text": "Who wrote it ?", "label": "HUM"}, {"text": "Why ?", "label": "2"}]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    assert [e.output for e in tasks.load_hf_task("trec", source=path).examples] == ["human", "description"]


def test_rte_pair_fields_in_simple_schema(tmp_path):
    path = write_jsonl(tmp_path / "rte.jsonl", [{"premise": "It rained.", "hypothesis": "It was wet.", "label": 0}])
    assert tasks.load_hf_task("rte", source=path).examples[0].output == "true"


# --- malformed inputs ----------------------------------------------------------------------------


def test_missing_columns_name_the_expected_fields(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"review": "nice", "label": 1}])
    with pytest.raises(TaskFormatError, match="sentence"):
        tasks.load_hf_task("sst2", source=path)


def test_bad_label_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"sentence": "ok", "label": 1}, {"sentence": "meh", "label": 7}])
    with pytest.raises(TaskFormatError, match="row 1"):
        tasks.load_hf_task("sst2", source=path)


def test_all_unlabelled_rows(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"sentence": "ok", "label": -1}])
    with pytest.raises(TaskFormatError, match="no labelled rows"):
        tasks.load_hf_task("sst2", source=path)


def test_missing_file_unknown_suffix_and_unknown_task(tmp_path):
    with pytest.raises(TaskFormatError, match="not found"):
        tasks.load_hf_task("sst2", source=tmp_path / "nope.jsonl")
    with pytest.raises(TaskFormatError, match="unsupported"):
        tasks.load_hf_task("sst2", source=tmp_path / "data.xlsx")
    with pytest.raises(TaskFormatError, match="sst2"):
        tasks.load_hf_task("imdb", source=fixture("sst2"))
    with pytest.raises(TaskFormatError):
        tasks.load_hf_task("sst2", source=12)  # type: ignore[arg-type]


def test_unparseable_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"sentence": "ok", "label": 1}\n{not json\n')
    with pytest.raises(TaskFormatError, match="broken.jsonl"):
        tasks.load_hf_task("sst2", source=path)


# --- the hub without network -----------------------------------------------------------------


@pytest.mark.parametrize("var", ["HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_hub_raises_typed_error_with_the_fix(monkeypatch, var):
    monkeypatch.setenv(var, "1")
    with pytest.raises(DatasetUnavailableError) as info:
        tasks.load_hf_task("sst2")
    msg = str(info.value)
    assert 'tv.tasks.load_hf_task("sst2", source="path/to/sst2.jsonl")' in msg
    assert '"sentence"' in msg and '"label"' in msg
    assert isinstance(info.value, TvlensError) and isinstance(info.value, RuntimeError)


def test_unreachable_hub_raises_before_trying_to_download(monkeypatch):
    import datasets.config

    for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(datasets, "load_dataset", _must_not_be_called)
    with pytest.raises(DatasetUnavailableError, match=r"unreachable.*source=\"path/to/trec.jsonl\""):
        tasks.load_hf_task("trec")


def test_hub_errors_are_wrapped(monkeypatch):
    import datasets
    import datasets.config

    def fail(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_hub, "hub_unreachable", lambda endpoint, timeout: None)
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DatasetUnavailableError, match="rte") as info:
        tasks.load_hf_task("rte", split="validation")
    assert isinstance(info.value.__cause__, ConnectionError)
    assert '"sentence1"' in str(info.value)


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("load_dataset must not be called when the hub is unreachable")


# --- registry --------------------------------------------------------------------------------


def test_registered_lazily():
    for name in ("sst2", "trec", "snli", "rte"):
        assert name in tasks.names()
        assert tasks.describe(name)  # no data loaded to describe


def test_registry_entry_raises_typed_error_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailableError):
        tasks._registry._FACTORIES["snli"][0]()  # the factory itself; get() would cache a success
