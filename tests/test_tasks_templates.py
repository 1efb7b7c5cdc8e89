"""Prompt templates: named and custom formats, names that carry them, vectors that remember them."""

from __future__ import annotations

import warnings

import pytest
import torch

import tvlens as tv
from tvlens.errors import TaskFormatError, TaskNotFoundError, TvlensWarning
from tvlens.tasks._templates import TEMPLATES, split_name, template

PAIRS = [("hot", "cold"), ("big", "small"), ("up", "down"), ("early", "late"), ("rich", "poor"), ("wet", "dry"),
         ("full", "empty"), ("loud", "quiet"), ("thick", "thin"), ("wide", "narrow"), ("deep", "shallow"),
         ("fast", "slow"), ("happy", "sad"), ("open", "closed"), ("strong", "weak"), ("hard", "soft")]

EXPECTED = {  # template -> (the 2-shot prompt of query "wet" after demos "hot", "big"; answer text)
    "arrow": "hot -> cold\nbig -> small\nwet ->",
    "qa": "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: wet\nA:",
    "{x} =>": "hot => cold\nbig => small\nwet =>",
    "Input: {x}\\nOutput:": "Input: hot\nOutput: cold\nInput: big\nOutput: small\nInput: wet\nOutput:",
}


@pytest.mark.parametrize("spec", list(EXPECTED))
def test_template_round_trip_task_to_prompts_to_text(spec):
    base = tv.tasks.from_pairs("opp", PAIRS, template="arrow")
    t = base.with_template(spec)
    ex = {e.inputs["x"]: e for e in t.examples}
    assert t.prompt_text(ex["wet"], [ex["hot"], ex["big"]]) == EXPECTED[spec]
    # through a split and a PromptSet: every prompt is demos then query, joined by the separator
    ps = tv.make_prompts(tv.make_splits(t, seed=0), "test", k=2, seed=0)
    for text, q, demos in zip(ps.texts, ps.queries, ps.demos):
        shown = [d.query(t.template) + t.answer_prefix + d.output for d in demos] + [q.query(t.template)]
        assert text == t.separator.join(shown) and len(demos) == 2
    assert ps.answers == [" " + q.output for q in ps.queries]
    # the name carries a non-default template and reads back to the same format
    assert (t.name == "opp") == (spec == "arrow")
    assert split_name(t.name)[1] in (None, template(spec).name)


def test_arrow_from_pairs_equals_the_old_literal_format():
    a = tv.tasks.from_pairs("opp", PAIRS, template="arrow")
    b = tv.tasks.from_pairs("opp", PAIRS, template="{x} ->")  # the literal query string (old spelling)
    assert (a.template, a.answer_prefix, a.separator) == (b.template, b.answer_prefix, b.separator)
    assert a.template_name == "arrow" and b.template_name == ""


def test_registry_names_carry_and_read_back_the_template():
    default = tv.tasks.get("capitalize")
    other = "qa" if default.template_name == "arrow" else "arrow"
    t = tv.tasks.get("capitalize", template=other)
    assert t.name == f"capitalize[{other}]" and t.base_name == "capitalize"
    assert tv.tasks.get(t.name) is t  # the printed name is the exact task
    assert tv.tasks.get("capitalize", template=default.template_name) is default  # own default: plain name
    c = tv.tasks.get("antonym", template="{x} =>")
    assert c.name == "antonym[{x} =>]" and tv.tasks.get(c.name).template == "{x} =>"
    with pytest.raises(TaskNotFoundError, match="give one of them"):
        tv.tasks.get(f"capitalize[{other}]", template=default.template_name)
    assert tv.tasks.resolve("antonym", model_name="toy", template="qa").name == "toy/antonym[qa]"


def test_templates_share_splits_and_demonstrations():
    a, q = tv.tasks.get("antonym", template="arrow"), tv.tasks.get("antonym", template="qa")
    sa, sq = tv.make_splits(a, seed=3), tv.make_splits(q, seed=3)
    for split in ("demo", "train", "val", "test"):
        assert sa[split] == sq[split]
    pa, pq = tv.make_prompts(sa, "test", k=3, seed=1), tv.make_prompts(sq, "test", k=3, seed=1)
    assert pa.demos == pq.demos and pa.queries == pq.queries and pa.texts != pq.texts


def test_embedded_model_tasks_keep_their_own_format():
    t = tv.tasks.get("toy/antonym")
    assert (t.template, t.separator, t.template_name) == ("{x} ->", " , ", "")
    assert tv.tasks.get("toy/antonym", template="arrow").name == "toy/antonym[arrow]"  # newline-joined: another format


@pytest.mark.parametrize("bad", ["", "   ", "nonsense", "{y", 3])
def test_bad_templates_raise_typed_errors(bad):
    with pytest.raises(TaskFormatError):
        template(bad)


def test_template_must_use_every_input_field():
    two = [t for t in tv.tasks.names("toy/") if tv.tasks.get(t).examples[0].fields[1:]]
    assert two, "the embedded world has two-input tasks"
    with pytest.raises(TaskFormatError, match="every input field"):
        tv.tasks.get(two[0]).with_template("qa")
    assert tv.tasks.get(two[0]).with_template("{x} {x2} =>").template == "{x} {x2} =>"


def _vector(task, model) -> tv.TaskVector:
    return tv.TaskVector(values=torch.zeros(1, model.cfg.d_model), sites=(tv.Site(1, -1),), task=task.name,
                         template=task.template_record(), model_fingerprint=tv.fingerprint(model),
                         d_model=model.cfg.d_model, n_layers=model.cfg.n_layers)


def test_vector_header_records_the_template(tmp_path, toy_model):
    t = tv.tasks.get("toy/antonym", template="qa")
    v = _vector(t, toy_model)
    path = v.save(tmp_path / "v.safetensors")
    back = tv.TaskVector.load(path)
    assert back.template == t.template_record() == {"name": "qa", "query": "Q: {x}\nA:", "answer_prefix": " ",
                                                    "separator": "\n\n"}
    assert back.task == "toy/antonym[qa]"


def test_trained_vectors_record_their_template(toy_model):
    task = tv.tasks.get("toy/antonym")
    res = tv.train_ltv(toy_model, task, layers=[1], positions=[-1], config=tv.LTVConfig(max_epochs=1, epoch_size=32, seed=0), progress=False)
    assert res.vector.template == task.template_record()


def test_template_mismatch_warns_and_names_both(toy_model):
    own, other = tv.tasks.get("toy/antonym"), tv.tasks.get("toy/antonym", template="qa")
    v = _vector(own, toy_model)
    ps = tv.make_prompts(tv.make_splits(other), "test", k=0, n=4)
    with pytest.warns(TvlensWarning, match=r"template .*'\{x\} ->'.* applied to prompts of template 'qa'") as rec:
        tv.evaluate(toy_model, ps, intervention=tv.steering(toy_model, v))
    assert not any("transfer" in str(w.message) for w in rec)  # same task: a template warning, not a transfer one
    with warnings.catch_warnings():  # its own template: no warning
        warnings.simplefilter("error", TvlensWarning)
        tv.evaluate(toy_model, tv.make_prompts(tv.make_splits(own), "test", k=0, n=4), intervention=tv.steering(toy_model, v))


def test_vector_without_a_recorded_template_does_not_warn(toy_model):
    own, other = tv.tasks.get("toy/antonym"), tv.tasks.get("toy/antonym", template="qa")
    v = _vector(own, toy_model).with_values(torch.zeros(1, toy_model.cfg.d_model), template={})  # a file from before
    with warnings.catch_warnings(record=True) as rec:  # (the toy tokenizer lacks 'Q:': an unknown-token warning)
        warnings.simplefilter("always")
        tv.evaluate(toy_model, tv.make_prompts(tv.make_splits(other), "test", k=0, n=4), intervention=tv.steering(toy_model, v))
    assert not [w for w in rec if "template" in str(w.message)]


def test_cli_template_option_reaches_the_task(capsys):
    from tvlens.cli import main

    assert main(["eval", "--task", "toy/antonym", "--template", "qa", "--icl-shots", "1", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "toy/antonym[qa]"


def test_named_templates_are_the_documented_ones():
    assert TEMPLATES["arrow"].query == "{x} ->" and TEMPLATES["arrow"].separator == "\n"
    assert TEMPLATES["qa"].query == "Q: {x}\nA:" and TEMPLATES["qa"].separator == "\n\n"


@pytest.mark.real_model
@pytest.mark.parametrize("spec", ["arrow", "qa"])
def test_template_round_trip_through_the_real_tokenizer(smollm2, spec):
    t = tv.tasks.get("capitalize", template=spec)
    ps = tv.make_prompts(tv.make_splits(t), "test", k=2, n=5)
    batch = ps.tokenize(smollm2, padding_side="right")
    for i, text in enumerate(ps.texts):
        ids = batch.tokens[i][batch.attention_mask[i].bool()].tolist()
        assert smollm2.tokenizer.decode(ids[1:]) == text  # BOS, then exactly the prompt text
