import warnings

import pytest
import torch

import tvlens as tv
from tvlens.errors import LabelTokenError, PromptError


@pytest.fixture(scope="module")
def antonym_splits():
    return tv.make_splits(tv.tasks.get("toy/antonym"), seed=0)


def test_splits_are_disjoint_and_cover_the_task(antonym_splits):
    s = antonym_splits
    parts = [set(s.demo), set(s.train), set(s.val), set(s.test)]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == len(s.task)
    assert all(len(p) > 0 for p in parts)


def test_splits_reproducible_and_seeded(antonym_splits):
    task = tv.tasks.get("toy/antonym")
    assert tv.make_splits(task, seed=0) == antonym_splits
    assert tv.make_splits(task, seed=1).test != antonym_splits.test


def test_classification_splits_are_label_balanced():
    s = tv.make_splits(tv.tasks.get("toy/is_antonym"), seed=0)
    outs = [e.output for e in s.demo + s.train + s.val + s.test]
    assert outs.count("true") == outs.count("false") > 0


def test_paper_caps_apply():
    pairs = [(f"w{i}", f"v{i}") for i in range(5000)]
    s = tv.make_splits(tv.tasks.from_pairs("big", pairs), seed=0)
    assert (len(s.train), len(s.val)) == (600, 400)


def test_kshot_prompt_text_and_demo_pool(antonym_splits):
    ps = tv.make_prompts(antonym_splits, "test", k=3, seed=0)
    assert len(ps) == len(antonym_splits.test)
    q, demos, text = ps.queries[0], ps.demos[0], ps.texts[0]
    assert len(demos) == 3 and all(d in antonym_splits.demo for d in demos)
    expected = " , ".join([f"{d.inputs['x']} -> {d.output}" for d in demos] + [f"{q.inputs['x']} ->"])
    assert text == expected
    assert ps.answers[0] == " " + q.output
    assert tv.make_prompts(antonym_splits, "test", k=3, seed=0).texts == ps.texts
    assert tv.make_prompts(antonym_splits, "test", k=3, seed=1).texts != ps.texts


def test_zero_shot_and_frame(antonym_splits):
    ps = tv.make_prompts(antonym_splits, "val", k=0)
    assert all(t.endswith("->") and "," not in t for t in ps.texts)
    df = ps.to_frame()
    assert list(df.columns) == ["prompt", "answer", "k", "split"] and len(df) == len(ps)
    assert "toy/antonym" in str(ps)


def test_bad_k_and_split(antonym_splits):
    with pytest.raises(PromptError, match="demonstration pool"):
        tv.make_prompts(antonym_splits, "test", k=10_000)
    with pytest.raises(PromptError):
        tv.make_prompts(antonym_splits, "test", k=-1)
    with pytest.raises(PromptError):
        tv.make_prompts(antonym_splits, "demo")


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_gives_the_unpadded_logits(tiny_model, antonym_splits, side):
    ps = tv.make_prompts(antonym_splits, "test", k=2, seed=0).subset(slice(0, 6))
    # vary lengths: mix zero-shot and 2-shot prompts
    zs = tv.make_prompts(antonym_splits, "test", k=0, seed=0).subset(slice(0, 6))
    texts = [t for pair in zip(ps.texts, zs.texts) for t in pair]
    answers = [a for pair in zip(ps.answers, zs.answers) for a in pair]
    batch = tv.tokenize_prompts(tiny_model, texts, answers, padding_side=side)
    assert len(set(batch.lengths.tolist())) > 1
    with torch.no_grad():
        logits = tiny_model(batch.tokens, attention_mask=batch.attention_mask)
        for i, text in enumerate(texts):
            alone = tiny_model(tiny_model.to_tokens(text))[0, -1]
            torch.testing.assert_close(logits[i, batch.last_index[i]], alone, atol=1e-4, rtol=1e-4)
            assert tiny_model.tokenizer.decode([int(batch.tokens[i, batch.last_index[i]])]) == "->"
            assert tiny_model.tokenizer.decode([int(batch.tokens[i, batch.first_index[i]])]) == "<bos>"


def test_answer_and_label_ids(tiny_model):
    task = tv.tasks.get("toy/sentiment")
    ps = tv.make_prompts(tv.make_splits(task), "test", k=1)
    b = ps.tokenize(tiny_model)
    vocab = tiny_model.tokenizer.get_vocab()
    assert b.label_ids.tolist() == [vocab["positive"], vocab["negative"]]
    assert b.answer_ids.tolist() == [vocab[q.output] for q in ps.queries]


def test_multi_token_label_is_a_clear_error(tiny_model):
    pairs = [(f"kevi {i}", "true false" if i % 2 else "even") for i in range(20)]  # distinct inputs: duplicates are dropped
    task = tv.tasks.from_pairs("bad", pairs, label_words=["true false", "even"])
    ps = tv.make_prompts(tv.make_splits(task), "test")
    with pytest.raises(LabelTokenError, match="single-token"):
        ps.tokenize(tiny_model)


def test_prompt_longer_than_context_is_an_error(toy_tokenizer):
    from tests.conftest import make_tiny_model

    short = make_tiny_model(toy_tokenizer, n_layers=1)
    short.cfg.n_ctx = 8
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=4)
    with pytest.raises(PromptError, match="context"):
        ps.tokenize(short)


def test_words_outside_the_vocabulary_are_warned_about(tiny_model, caplog):
    english = tv.make_prompts(tv.make_splits(tv.tasks.get("capital")), "test", k=1, n=5)
    with caplog.at_level("WARNING", logger="tvlens.prompts"), pytest.warns(tv.errors.TvlensWarning, match="use a toy/ task") as rec:
        english.tokenize(tiny_model)
    assert rec[0].filename == __file__  # points at the caller's line, not inside tvlens
    assert "5 of 5 prompts and 5 answers of capital contain the unknown token '<unk>'" in caplog.text
    assert "use a toy/ task" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tvlens.prompts"):
        tv.make_prompts(tv.make_splits(tv.tasks.get("toy/capital")), "test", k=1, n=5).tokenize(tiny_model)
    assert caplog.text == ""


def test_no_unknown_token_warning_when_unk_is_the_bos_token(caplog, tmp_path):
    """GPT-2's tokenizer names <|endoftext|> (also its BOS) as unk: a prompt's BOS is not an unknown word."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import make_tiny_model

    words = ["<eot>", "a", "b", "->"]
    core = Tokenizer(WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<eot>"))
    core.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<eot>", eos_token="<eot>", unk_token="<eot>").save_pretrained(tmp_path)
    model = make_tiny_model(PreTrainedTokenizerFast.from_pretrained(tmp_path))
    assert model.tokenizer.unk_token_id == model.tokenizer.bos_token_id
    task = tv.tasks.from_pairs("ab", [("a", "b"), ("b", "a")], template="{x} ->", separator=" ")
    ex = task.examples
    splits = tv.TaskSplits(task, ex[:1], ex, ex, ex, seed=0)  # too few distinct inputs for make_splits
    with caplog.at_level("WARNING", logger="tvlens.prompts"), warnings.catch_warnings():
        warnings.simplefilter("error", tv.errors.TvlensWarning)
        tv.make_prompts(splits, "train", k=0).tokenize(model)
    assert caplog.text == ""


def _loadable_tasks():
    out = []
    for name in tv.tasks.names():
        try:
            out.append(tv.tasks.get(name))
        except tv.errors.DatasetUnavailableError:  # hub datasets, offline: their fixtures below
            continue
    return out


def test_every_registered_task_splits_disjointly_by_input():
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    tasks = _loadable_tasks() + [tv.tasks.load_hf_task(n, source=fixtures / f"{n}.jsonl") for n in ("sst2", "trec", "snli", "rte")]
    assert len(tasks) >= 24
    for task in tasks:
        for seed in (0, 1):
            s = tv.make_splits(task, seed=seed)
            parts = [[e.fields for e in s[n]] for n in ("demo", "train", "val", "test")]
            flat = [f for part in parts for f in part]
            assert len(flat) == len(set(flat)), f"{task.name}: an input is in two splits (or twice in one)"
