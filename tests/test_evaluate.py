import contextlib

import pytest
import torch

import tvlens as tv


@pytest.fixture(scope="module")
def sentiment_prompts():
    return tv.make_prompts(tv.make_splits(tv.tasks.get("toy/sentiment")), "test", k=2, seed=0)


def test_evaluate_matches_a_naive_loop(tiny_model, sentiment_prompts):
    res = tv.evaluate(tiny_model, sentiment_prompts, batch_size=5)
    vocab = tiny_model.tokenizer.get_vocab()
    labels = [vocab["positive"], vocab["negative"]]
    correct, label_correct = 0, 0
    with torch.no_grad():
        for text, q in zip(sentiment_prompts.texts, sentiment_prompts.queries):
            logits = tiny_model(tiny_model.to_tokens(text))[0, -1]
            gold = vocab[q.output]
            correct += int(logits.argmax()) == gold
            label_correct += labels[int(logits[labels].argmax())] == gold
    n = len(sentiment_prompts)
    assert res.n == n
    assert res.accuracy == pytest.approx(correct / n)
    assert res.label_accuracy == pytest.approx(label_correct / n)
    df = res.to_frame(tiny_model)
    assert len(df) == n and df["correct"].mean() == pytest.approx(res.accuracy)


def test_padding_side_does_not_change_results(tiny_model, sentiment_prompts):
    left = tv.evaluate(tiny_model, sentiment_prompts, padding_side="left")
    right = tv.evaluate(tiny_model, sentiment_prompts, padding_side="right")
    torch.testing.assert_close(left.gold_logprob, right.gold_logprob, atol=1e-4, rtol=1e-4)


def test_intervention_runs_per_batch_and_changes_logits(tiny_model, sentiment_prompts):
    seen = []

    def push_last(batch):
        seen.append(len(batch))
        rows = torch.arange(len(batch))

        def hook(resid, hook):
            resid = resid.clone()
            resid[rows, batch.last_index] += 5.0 * tiny_model.W_U[:, 0]
            return resid

        return tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", hook)])

    base = tv.evaluate(tiny_model, sentiment_prompts)
    nudged = tv.evaluate(tiny_model, sentiment_prompts, intervention=push_last, batch_size=7)
    assert sum(seen) == len(sentiment_prompts) and max(seen) == 7
    assert not torch.allclose(base.gold_logprob, nudged.gold_logprob)
    noop = tv.evaluate(tiny_model, sentiment_prompts, intervention=lambda b: contextlib.nullcontext())
    torch.testing.assert_close(noop.gold_logprob, base.gold_logprob)
    assert tiny_model.hook_dict["blocks.1.hook_resid_pre"].fwd_hooks == []


def test_generation_task_has_no_label_accuracy(tiny_model):
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=0)
    res = tv.evaluate(tiny_model, ps)
    assert res.label_accuracy is None and res.label == "zero-shot"
    assert "toy/antonym" in repr(res)
