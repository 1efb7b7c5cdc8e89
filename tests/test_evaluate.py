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


# --- steered evaluation on the engine: the oracle is a full forward with the same edits ----------

ENGINE_ARCHS = ["ln", "lnpre", "gqa_rms", "shortformer"]


def _arch_model(toy_tokenizer, arch, tmp_path):
    from tests.conftest import TINY_ARCHS, make_cached_tiny_model

    kw = TINY_ARCHS.get(arch) or dict(n_layers=3, n_heads=2, positional_embedding_type="shortformer")
    return make_cached_tiny_model(toy_tokenizer, tmp_path, seed=11, **kw)  # on 4.x a Hugging Face bridge: a real prefix


def _full_forward_logits(model, batch, edits):
    from tvlens._hooks import Span, intervene

    with torch.no_grad(), intervene(model, *edits, span=Span(batch.first_index, batch.last_index)):
        logits = model(batch.tokens, attention_mask=batch.attention_mask)  # [batch, pos, d_vocab]
    return logits[torch.arange(len(batch)), batch.last_index].float()


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("arch", ENGINE_ARCHS)
def test_steered_evaluation_on_the_engine_equals_the_full_forward(toy_tokenizer, tmp_path, arch, padding, caplog):
    import logging

    from tests.conftest import assert_no_hooks_left
    from tvlens._hooks import AblateHeads, AddAt, AddPerRow
    from tvlens.evaluate import last_token_logits

    model = _arch_model(toy_tokenizer, arch, tmp_path)
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=2, n=9)  # mixed lengths
    batch = ps.tokenize(model, padding_side=padding)
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(0)
    theta = 4 * torch.randn(2, d, generator=g)
    v = tv.TaskVector(theta[:1], (tv.Site(1, -1),), task="toy/antonym", model_fingerprint=tv.fingerprint(model))
    cases = {
        "add": [AddAt((tv.Site(1, -1),), theta[:1])],
        "replace at two columns": [AddAt((tv.Site(2, -1), tv.Site(1, -3)), theta, operation="replace")],
        "per-row add": [AddPerRow(tv.Site(2, -1), torch.randn(4, d, generator=g))],  # one sub-batch of 4 rows
        "zero heads": [AblateHeads(((1, 0), (2, 1)), positions=(-1,))],
        "at BOS": [AddAt((tv.Site(0, 0),), theta[:1])],
    }
    clean = _full_forward_logits(model, batch, [])
    with caplog.at_level(logging.INFO, logger="tvlens._engine"):
        for label, edits in cases.items():
            if label == "per-row add":
                sub = batch[0:4]
                got = last_token_logits(model, sub, intervention=edits, batch_size=4)
                ref = _full_forward_logits(model, sub, edits)
            else:
                got = last_token_logits(model, batch, intervention=edits, batch_size=4)
                ref = _full_forward_logits(model, batch, edits)
                assert (ref - clean).abs().max() > 1e-3, label  # the edit does something
            assert (got - ref).abs().max() < 1e-5, label
            assert torch.equal(got.argmax(-1), ref.argmax(-1)), label
        res = tv.evaluate(model, ps, intervention=tv.steering(model, v), padding_side=padding, batch_size=4)
    ref = _full_forward_logits(model, batch, [AddAt(v.sites, v.values)])
    assert res.predicted.tolist() == ref.argmax(-1).tolist()
    assert res.accuracy == float((ref.argmax(-1) == batch.answer_ids).float().mean())
    assert (res.gold_logprob - ref.log_softmax(-1)[torch.arange(len(batch)), batch.answer_ids]).abs().max() < 1e-5
    assert "full forward" not in caplog.text  # every condition took the suffix
    assert_no_hooks_left(model)


def test_conditions_share_one_prefix_and_equal_one_evaluation_each(toy_model):
    from tvlens.evaluate import evaluate_conditions

    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    ps = tv.make_prompts(splits, "test", k=8, n=40)
    g = torch.Generator().manual_seed(0)
    vectors = {f"L{lay}": tv.TaskVector(2 * torch.randn(1, toy_model.cfg.d_model, generator=g), (tv.Site(lay, -1),),
                                        task="toy/antonym", model_fingerprint=tv.fingerprint(toy_model)) for lay in (1, 3)}
    conditions = {"none": None, **{k: tv.steering(toy_model, v) for k, v in vectors.items()}}
    together = evaluate_conditions(toy_model, ps, conditions, batch_size=16)
    for label, iv in conditions.items():
        alone = tv.evaluate(toy_model, ps, intervention=iv, label=label, batch_size=16)
        assert together[label].predicted.tolist() == alone.predicted.tolist()
        assert together[label].accuracy == alone.accuracy and together[label].label == label
        assert (together[label].gold_logprob - alone.gold_logprob).abs().max() < 1e-5
    assert (together["L1"].gold_logprob - together["none"].gold_logprob).abs().max() > 1e-2  # the vectors steer


def test_a_context_manager_intervention_runs_a_logged_full_forward(tiny_model, sentiment_prompts, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="tvlens._engine"):
        noop = tv.evaluate(tiny_model, sentiment_prompts, intervention=lambda b: contextlib.nullcontext())
    assert "context manager" in caplog.text
    base = tv.evaluate(tiny_model, sentiment_prompts)
    assert noop.predicted.tolist() == base.predicted.tolist()
