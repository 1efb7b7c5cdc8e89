"""Logit lens, task alignment and decoded tokens: oracles on tiny random models (LN and a GQA RMSNorm
model), behaviour on the embedded model."""

from __future__ import annotations

import pytest
import torch

import tvlens as tv
from tests.conftest import assert_no_hooks_left, make_tiny_model
from tvlens.analysis import (DecodedTokens, LensResult, answer_token_ids, decoded_tokens, lens_logits, lens_states,
                             logit_lens, task_alignment)
from tvlens.analysis.lens import readout_directions
from tvlens.errors import ConfigError


@pytest.fixture(scope="module", params=["ln", "gqa_rms"])
def tiny(request, toy_tokenizer):
    if request.param == "ln":
        return make_tiny_model(toy_tokenizer, n_layers=3, seed=1)
    return make_tiny_model(toy_tokenizer, n_layers=3, n_heads=4, n_key_value_heads=2, normalization_type="RMS",
                           positional_embedding_type="rotary", seed=2)


def _batch(model, k=2, n=12, task="toy/category"):
    return tv.make_prompts(tv.make_splits(tv.tasks.get(task)), "test", k=k, n=n).tokenize(model)


def test_lens_final_layer_is_the_models_logits_and_matches_accumulated_resid(tiny):
    from tvlens.evaluate import last_token_logits

    batch = _batch(tiny)  # left-padded, prompts of several lengths
    states = lens_states(tiny, batch, batch_size=5)  # [layer, batch, d_model], sub-batches of 5
    assert states.shape == (tiny.cfg.n_layers + 1, len(batch), tiny.cfg.d_model)
    lens = lens_logits(tiny, states)
    torch.testing.assert_close(lens[-1], last_token_logits(tiny, batch), atol=1e-4, rtol=1e-4)
    _, cache = tiny.run_with_cache(batch.tokens, attention_mask=batch.attention_mask)
    acc = cache.accumulated_resid(apply_ln=True)  # [layer, batch, pos, d_model], ln_final recomputed per layer
    rows = torch.arange(len(batch))
    ref = acc[:, rows, batch.last_index] @ tiny.W_U + tiny.b_U
    torch.testing.assert_close(lens, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(lens[1], lens[-1])  # the layers differ: the check is not vacuous
    assert_no_hooks_left(tiny)


def test_injected_vector_enters_at_its_layer_only(tiny):
    batch = _batch(tiny, k=0)
    theta = torch.randn(1, tiny.cfg.d_model)
    site = tv.Site(1, -1)
    clean = lens_states(tiny, batch)
    hit = lens_states(tiny, batch, intervention=tv.interventions.AddAt((site,), theta))
    torch.testing.assert_close(hit[:1], clean[:1])  # below the site: untouched
    torch.testing.assert_close(hit[1] - clean[1], theta.expand(len(batch), -1), atol=1e-5, rtol=1e-5)  # at it: + theta
    assert (hit[2:] - clean[2:]).abs().max() > 1e-3
    assert_no_hooks_left(tiny)


def test_alignment_of_label_directions_is_one_and_of_orthogonal_ones_zero(tiny):
    ids = torch.tensor([5, 9, 17])
    for definition in ("span", "raw_span", "max_cos"):
        u = readout_directions(tiny, ids, definition=definition)  # [d_model, label]
        a = task_alignment(u.T, ids, tiny, definition=definition)
        torch.testing.assert_close(a, torch.ones(3), atol=1e-5, rtol=0)
        mix = task_alignment(u.T.sum(0) * 3.0, ids, tiny, definition=definition)  # scale-free
        if definition != "max_cos":
            torch.testing.assert_close(mix, torch.tensor(1.0), atol=1e-5, rtol=0)
    h = torch.randn(4, tiny.cfg.d_model)
    if tiny.cfg.normalization_type == "LN":
        h = h - h.mean(-1, keepdim=True)
    q, _ = torch.linalg.qr(readout_directions(tiny, ids))
    orth = h - (h @ q) @ q.T  # remove the span of the readout directions
    torch.testing.assert_close(task_alignment(orth, ids, tiny), torch.zeros(4), atol=1e-5, rtol=0)
    mid = task_alignment(h, ids, tiny)
    assert ((mid > 0) & (mid < 1)).all()
    from tvlens.analysis.lens import chance_alignment

    d = tiny.cfg.d_model - (tiny.cfg.normalization_type == "LN")
    assert chance_alignment(tiny, ids) == pytest.approx((3 / d) ** 0.5)
    rand = task_alignment(torch.randn(4000, tiny.cfg.d_model), ids, tiny)
    assert (rand**2).mean().sqrt() == pytest.approx(chance_alignment(tiny, ids), rel=0.1)  # random directions sit at the floor


def test_alignment_rejects_bad_input(tiny):
    with pytest.raises(ConfigError, match="definition"):
        task_alignment(torch.randn(2, tiny.cfg.d_model), [1], tiny, definition="cosine")
    with pytest.raises(ConfigError, match="d_model"):
        task_alignment(torch.randn(2, 7), [1], tiny)
    with pytest.raises(ConfigError, match="label_ids"):
        task_alignment(torch.randn(2, tiny.cfg.d_model), [], tiny)


def test_decoded_tokens_oracle(tiny):
    t = 11
    col = tiny.W_U[:, t].detach()
    raw = decoded_tokens(tiny, {"col": col * 10}, k=3, through_ln=False)
    expect = (col @ tiny.W_U).topk(3).indices
    assert raw.token_ids[0].tolist() == expect.tolist()
    v = torch.randn(2, tiny.cfg.d_model)
    dec = decoded_tokens(tiny, v, k=4)
    ref = (tiny.ln_final(v[:, None])[:, 0] @ tiny.W_U).topk(4)
    assert dec.token_ids.tolist() == ref.indices.tolist()
    torch.testing.assert_close(dec.scores, ref.values)
    assert dec.tokens[0][0] == tiny.tokenizer.decode([int(ref.indices[0, 0])])
    assert list(dec.to_frame().columns) == ["vector", "top_tokens"] and len(dec.long_frame()) == 8


def test_logit_lens_final_layer_equals_evaluate_on_the_embedded_model(toy_model):
    task = "toy/category"
    vec = tv.train_ltv(toy_model, task, layers=[1], progress=False).vector
    res = logit_lens(toy_model, task, vectors={"early": vec}, shots=(0, 8), n=25)
    assert isinstance(res, LensResult) and res.conditions == ("zero-shot", "8-shot ICL", "early")
    splits = tv.make_splits(tv.tasks.get(task))
    zs = tv.evaluate(toy_model, tv.make_prompts(splits, "test", k=0, n=25))
    icl = tv.evaluate(toy_model, tv.make_prompts(splits, "test", k=8, n=25))
    steered = tv.evaluate(toy_model, tv.make_prompts(splits, "test", k=0, n=25), intervention=tv.steering(toy_model, vec))
    L = toy_model.cfg.n_layers
    assert res.accuracy[:, L].tolist() == pytest.approx([zs.accuracy, icl.accuracy, steered.accuracy])
    # behaviour on the embedded model: ICL and the vector solve the task, zero-shot does not
    assert icl.accuracy > 0.8 and steered.accuracy > 0.8 and zs.accuracy < 0.5
    assert res.icl_beats_zero_shot_layer is not None and 0 < res.icl_beats_zero_shot_layer <= L
    # the vector's states are aligned with the labels more than zero-shot's from its layer on
    assert (res.curve("early", "alignment")[2:] > res.curve("zero-shot", "alignment")[2:]).all()
    assert res.label_accuracy.shape == res.accuracy.shape and bool((res.label_accuracy >= res.accuracy).all())
    frame = res.to_frame()
    assert len(frame) == 3 * (L + 1) and set(frame.columns) >= {"condition", "layer", "accuracy", "alignment"}
    assert len(res.plot().data) == 6
    back = LensResult.from_json(res.to_json())
    assert torch.equal(back.accuracy, res.accuracy) and back.conditions == res.conditions
    assert "<table" in res._repr_html_()
    assert_no_hooks_left(toy_model)


def test_answer_ids_and_decoded_late_vector_reads_as_labels(toy_model):
    task = tv.tasks.get("toy/category")
    ps = tv.make_prompts(tv.make_splits(task), "test", n=10)
    ids = answer_token_ids(toy_model, ps)
    assert sorted(toy_model.tokenizer.decode([int(i)]) for i in ids) == sorted(task.label_words)
    vec = tv.train_ltv(toy_model, task, layers=[3], progress=False).vector
    dec = decoded_tokens(toy_model, vec, k=6)
    assert isinstance(dec, DecodedTokens) and dec.labels == ("L3@-1",)
    assert len(set(dec.tokens[0]) & set(task.label_words)) >= 4  # a late LTV decodes to the task's labels
    gen = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", n=10)
    assert len(answer_token_ids(toy_model, gen)) == len({int(i) for i in gen.tokenize(toy_model).answer_ids})
