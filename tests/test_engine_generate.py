"""Greedy generation through the engine: batched left padding = each prompt alone = full forwards."""

import pytest
import torch

import tvlens as tv
from tvlens._engine_generate import AddToGenerated, generate
from tvlens._hooks import AddAt
from tvlens.prompts import tokenize_prompts
from tvlens.sites import Site

TEXTS = ["fosi ->", "fosi -> sive , pago -> tane , sive ->", "pago ->"]


@pytest.fixture(scope="module")
def model():
    return tv.load_model("toy")


def _edits(model, every):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, model.cfg.d_model, generator=g) * 20
    es = [AddAt((Site(2, -1),), v)]
    if every:
        es.append(AddToGenerated("blocks.2.hook_resid_pre", v[0]))
    return es


@pytest.mark.parametrize("steer, every", [(False, False), (True, False), (True, True)])
def test_left_padded_batch_equals_each_prompt_alone_and_the_uncached_loop(model, steer, every):
    edits = _edits(model, every) if steer else []
    batch = tokenize_prompts(model, TEXTS, [" sive"] * 3, padding_side="left")
    assert (batch.attention_mask == 0).any()  # padding is really exercised
    out = generate(model, batch, edits, max_new_tokens=6)
    assert out.shape == (3, 6)
    for i, t in enumerate(TEXTS):
        alone = generate(model, tokenize_prompts(model, [t], [" sive"]), edits, max_new_tokens=6)
        assert torch.equal(alone[0], out[i]), t
    assert torch.equal(generate(model, batch, edits, max_new_tokens=6, use_cache=False), out)


@pytest.mark.parametrize("every", [False, True])
def test_matches_model_generate_under_the_same_hooks(model, every):
    """Oracle: TransformerLens's own generate inside intervene (AddAt's "every_token" policy)."""
    from tvlens._hooks import intervene

    batch = tokenize_prompts(model, TEXTS[1:2], [" sive"])
    v = torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(1)) * 20
    ours = [AddAt((Site(2, -1),), v)] + ([AddToGenerated("blocks.2.hook_resid_pre", v[0])] if every else [])
    theirs = AddAt((Site(2, -1),), v, generation="every_token" if every else "prompt")
    with intervene(model, theirs):
        ref = model.generate(batch.tokens, max_new_tokens=5, do_sample=False, verbose=False)[0, batch.tokens.shape[1]:]
    got = generate(model, batch, ours, max_new_tokens=5)
    assert torch.equal(got[0], ref.cpu())
    assert not torch.equal(got, generate(model, batch, max_new_tokens=5))  # the edit does change the text
