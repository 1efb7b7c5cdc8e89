"""Head saliency: one-pass gradients == head-by-head gradients, batched exact == a loop of single ablations."""

from __future__ import annotations

import pytest
import torch

import tvlens as tv
from tests.conftest import TINY_ARCHS, assert_no_hooks_left, make_tiny_model
from tvlens import interventions as iv
from tvlens.analysis import HeadSaliency, head_saliency, spearman
from tvlens.analysis._inputs import p_gold
from tvlens.analysis.saliency import exact_drops, grad_attribution
from tvlens.errors import ConfigError

ARCHS = {name: TINY_ARCHS[name] for name in ("ln", "gqa_rms")}


@pytest.fixture(scope="module", params=list(ARCHS))
def model(request, toy_tokenizer):
    return make_tiny_model(toy_tokenizer, seed=2, **ARCHS[request.param])


@pytest.fixture(scope="module")
def batch_and_prompts(toy_tokenizer):
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=1, n=5)  # mixed lengths: left padding
    return ps


@pytest.fixture(scope="module")
def toy_vector(toy_model):
    return tv.train_ltv(toy_model, "toy/antonym", progress=False).vector  # the default LTV: layer 2, last token


def vec(model, layer, seed=0, scale=2.0):
    theta = scale * torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return tv.TaskVector(theta, (tv.Site(layer, -1),), task="toy/antonym", model_fingerprint=tv.fingerprint(model))


def p_with(model, vector, batch, head, delta):
    """p(gold) with θ injected and ``delta`` added to one head's z at the last token (the reference)."""
    lay, h = head
    cfg = model.cfg
    vals = torch.zeros(len(batch), 1, cfg.n_heads, cfg.d_head)
    vals = vals.index_put((torch.arange(len(batch)), torch.zeros(len(batch), dtype=torch.long), torch.full((len(batch),), h)), delta)
    span = iv.Span(batch.first_index, batch.last_index)
    with iv.intervene(model, iv.AddAt(vector.sites, vector.values), iv.AddToHeads((lay,), vals), span=span):
        with iv.cache(model, [f"blocks.{lay}.attn.hook_z"], span=span) as acts:
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
    rows = torch.arange(len(batch))
    return p_gold(logits[rows, batch.last_index], batch.answer_ids), acts[f"blocks.{lay}.attn.hook_z"][rows, batch.last_index, h]


def test_one_pass_equals_head_by_head_gradients(model, batch_and_prompts):
    batch = batch_and_prompts.tokenize(model)
    v = vec(model, 1)
    layers = list(range(model.cfg.n_layers))
    attr, p = grad_attribution(model, v, batch, layers, batch_size=2)  # sub-batches too
    for lay in layers:
        for h in range(model.cfg.n_heads):
            delta = torch.zeros(len(batch), model.cfg.d_head, requires_grad=True)
            ph, z = p_with(model, v, batch, (lay, h), delta)
            (g,) = torch.autograd.grad(ph.sum(), delta)
            torch.testing.assert_close(attr[:, lay, h], (z * g).sum(-1), atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(p, ph.detach(), atol=1e-6, rtol=1e-5)
    assert attr.abs().max() > 0
    assert_no_hooks_left(model)


def test_add_to_heads_matches_adding_through_w_o(model, batch_and_prompts):
    batch = batch_and_prompts.tokenize(model)
    d = torch.randn(len(batch), model.cfg.d_head, generator=torch.Generator().manual_seed(5))
    span = iv.Span(batch.first_index, batch.last_index)
    vals = torch.zeros(len(batch), 1, model.cfg.n_heads, model.cfg.d_head)
    vals[:, 0, 1] = d
    with iv.cache(model, ["blocks.1.hook_attn_out"], span=span) as clean:
        model(batch.tokens, attention_mask=batch.attention_mask)
    with iv.intervene(model, iv.AddToHeads((1,), vals), span=span), iv.cache(model, ["blocks.1.hook_attn_out"], span=span) as got:
        model(batch.tokens, attention_mask=batch.attention_mask)
    rows = torch.arange(len(batch))
    change = got["blocks.1.hook_attn_out"] - clean["blocks.1.hook_attn_out"]
    torch.testing.assert_close(change[rows, batch.last_index], d @ model.W_O[1, 1].detach(), atol=1e-5, rtol=1e-5)
    change[rows, batch.last_index] = 0
    assert change.abs().max() < 1e-6  # only the last token moved
    assert_no_hooks_left(model)


def test_batched_exact_equals_one_ablation_at_a_time(model, batch_and_prompts):
    batch = batch_and_prompts.tokenize(model)
    v = vec(model, 1)
    heads = [(lay, h) for lay in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]  # incl. a layer before θ
    drops, base = exact_drops(model, v, batch, heads, heads_per_pass=3)
    span = iv.Span(batch.first_index, batch.last_index)
    rows = torch.arange(len(batch))
    with torch.no_grad():
        for j, hd in enumerate(heads):
            with iv.intervene(model, iv.AddAt(v.sites, v.values), iv.AblateHeads((hd,), "zero", positions=(-1,)), span=span):
                logits = model(batch.tokens, attention_mask=batch.attention_mask)
            torch.testing.assert_close(drops[:, j], base - p_gold(logits[rows, batch.last_index], batch.answer_ids), atol=1e-6, rtol=1e-4)
    assert drops.abs().max() > 0
    assert_no_hooks_left(model)


def test_attribution_tracks_exact_ablation_on_a_tiny_model(model, batch_and_prompts):
    v = vec(model, 0)
    g = head_saliency(model, v, prompts=batch_and_prompts)
    e = head_saliency(model, v, prompts=batch_and_prompts, mode="exact")
    assert spearman(g, e) > 0.8  # small random models are nearly linear in one head's output
    assert torch.sign(g.attribution).eq(torch.sign(e.attribution)).float().mean() >= 0.75


def test_embedded_model_one_pass_vs_exact(toy_model, toy_vector):
    v = toy_vector
    g = head_saliency(toy_model, v, "toy/antonym")
    e = head_saliency(toy_model, v, "toy/antonym", mode="exact")
    assert g.scores[: v.sites[0].layer].isnan().all() and not g.scores[v.sites[0].layer :].isnan().any()
    assert spearman(g, e) >= 0.8, (g.scores, e.scores)
    assert g.p_gold > 0.5  # the vector makes the answer likely
    assert_no_hooks_left(toy_model)


def test_result_queries(toy_model, toy_vector):
    v = toy_vector
    s = head_saliency(toy_model, v, "toy/antonym", layers=range(toy_model.cfg.n_layers))
    df = s.to_frame()
    assert list(df.columns) == ["layer", "head", "score", "rank", "attribution"] and len(df) == 20
    assert sorted(df["rank"]) == list(range(1, 21))
    top = s.top(0.1)
    assert len(top) == 2 and s.scores[top[0]] == s.scores.max()
    assert s.top(1.0)[-1] == tuple(df.loc[df["rank"].idxmax(), ["layer", "head"]])
    q = s.query(layer=3, min_score=0.0)
    assert set(q.layer) == {3} and list(q["rank"]) == sorted(q["rank"])
    assert len(s.query(min_score=float(s.scores.max()))) == 1
    back = HeadSaliency.from_json(s.to_json())
    assert back.top(0.2) == s.top(0.2)
    with pytest.raises(ConfigError):
        s.top(0)
    assert s.plot() is not None and "HeadSaliency" in repr(s)


def test_spearman():
    a = torch.tensor([[1.0, 2.0], [3.0, float("nan")]])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    with pytest.raises(ConfigError):
        spearman(a, torch.zeros(3))


def test_bad_inputs(model, batch_and_prompts):
    v = vec(model, 1)
    with pytest.raises(ConfigError, match="mode"):
        head_saliency(model, v, prompts=batch_and_prompts, mode="fast")
    with pytest.raises(ConfigError, match="task"):
        head_saliency(model, v)
    with pytest.raises(ConfigError, match="layers"):
        head_saliency(model, v, prompts=batch_and_prompts, layers=[7])
