"""Attention sinks: batched, padded profiles == one prompt at a time; masses; key vs random on the toy model."""

from __future__ import annotations

import pytest
import torch

import tvlens as tv
from tests.conftest import assert_no_hooks_left, make_tiny_model
from tvlens import interventions as iv
from tvlens.analysis import SinkResult, attention_sinks, head_saliency
from tvlens.errors import ConfigError


@pytest.fixture(scope="module")
def gqa(toy_tokenizer):
    return make_tiny_model(toy_tokenizer, n_layers=3, n_heads=4, n_key_value_heads=2, positional_embedding_type="rotary",
                           normalization_type="RMS", seed=6)


def test_profiles_equal_one_prompt_at_a_time(gqa):
    base = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=2, n=5)
    # 0, 1 or 2 demonstrations per prompt: mixed lengths, so the batch is left padded
    ps = tv.PromptSet(base.task, "test", 2, base.queries, tuple(d[: i % 3] for i, d in enumerate(base.demos)), 0)
    theta = 3 * torch.randn(1, gqa.cfg.d_model, generator=torch.Generator().manual_seed(0))
    v = tv.TaskVector(theta, (tv.Site(1, -1),), model_fingerprint=tv.fingerprint(gqa))
    res = attention_sinks(gqa, v, prompts=ps, key_heads=[(1, 0), (2, 3)], n_random=2)
    names = [f"blocks.{lay}.attn.hook_pattern" for lay in range(gqa.cfg.n_layers)]
    rows = []
    for i in range(len(ps)):  # the reference: one unpadded prompt per forward pass
        toks = ps.subset([i]).tokenize(gqa)
        with torch.no_grad(), tv.steer(gqa, v), iv.cache(gqa, names) as acts:
            gqa(toks.tokens)
        rows.append(torch.stack([acts[n][0, :, -1].flip(-1) for n in names]))  # [layer, head, offset]: offset 0 = last
    width = max(r.shape[-1] for r in rows)
    padded = torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=float("nan")) for r in rows])
    want = padded.nanmean(0)
    torch.testing.assert_close(res.profile, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.sink_mass, torch.stack([r[..., -1] for r in rows]).mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.final_mass, want[..., 0], atol=1e-6, rtol=1e-5)
    assert res.counts[0] == len(ps) and res.counts[-1] < len(ps)
    assert_no_hooks_left(gqa)


def test_toy_key_vs_random(toy_model):
    v = tv.train_ltv(toy_model, "toy/antonym", progress=False).vector
    sal = head_saliency(toy_model, v, "toy/antonym")
    res = attention_sinks(toy_model, v, "toy/antonym", sal, fraction=0.25, n_random=3)
    assert isinstance(res, SinkResult) and res.key_heads == tuple(sal.top(0.25))
    assert res.sink_mass.shape == (5, 4) and res.final_mass.shape == (5, 4)
    # zero-shot toy prompts are BOS x -> (3 tokens): every row of the profile is a distribution
    torch.testing.assert_close(res.profile.sum(-1), torch.ones(5, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.profile[..., -1], res.sink_mass)
    assert int(res.layer_histogram().sum()) == len(res.key_heads) and res.layer_histogram()[:2].sum() == 0
    m = res.group_mass()
    assert set(m) == {"key_sink", "key_final", "random_sink", "random_final"} and all(0 <= x <= 1 for x in m.values())
    df = res.to_frame()
    assert list(df.columns) == ["layer", "head", "sink_mass", "final_mass", "key"] and int(df.key.sum()) == len(res.key_heads)
    assert set(res.profile_frame().group) == {"key", "random"}
    assert res.plot() is not None and "SinkResult" in repr(res)
    back = SinkResult.from_json(res.to_json())
    torch.testing.assert_close(back.profile, res.profile)


def test_bad_inputs(toy_model):
    v = tv.TaskVector(torch.zeros(1, toy_model.cfg.d_model), (tv.Site(2, -1),), model_fingerprint=tv.fingerprint(toy_model))
    with pytest.raises(ConfigError, match="key heads"):
        attention_sinks(toy_model, v, "toy/antonym")
    with pytest.raises(ConfigError, match="n_random"):
        attention_sinks(toy_model, v, "toy/antonym", [(2, 0)], n_random=-1)
