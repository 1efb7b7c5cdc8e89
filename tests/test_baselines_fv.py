"""Function vectors: batched AIE against explicit patched runs, FV against the W_O-mapped sum, GQA, toy behaviour."""

import pytest
import torch

import tvlens as tv
from tests.conftest import assert_no_hooks_left, make_tiny_model
from tvlens._reference import aie_loop
from tvlens.baselines.function_vector import AIEResult, _clean_and_corrupted, aie_batched


def _batch(model, n=5, k=3):
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    return tv.make_prompts(splits, "train", k=k, n=n).tokenize(model)


def _explicit_aie(model, batch, mean_z, layer, head):
    """One head, prompt by prompt (unpadded), z[last, head] overwritten by a plain TransformerLens hook."""
    diffs = []
    for i in range(len(batch)):
        toks = batch.tokens[i, batch.attention_mask[i].bool()][None]

        def hook(z, hook):
            z[:, -1, head] = mean_z[layer, head]
            return z

        gold = batch.answer_ids[i]
        with torch.no_grad():
            p0 = model(toks)[0, -1].softmax(-1)[gold]
            p1 = model.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])[0, -1].softmax(-1)[gold]
        diffs.append(float(p1 - p0))
    return sum(diffs) / len(diffs)


def _random_means(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head, generator=g)


def _check_against_explicit(model):
    batch = _batch(model)
    mean_z = _random_means(model)
    heads = [(layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    fast = aie_batched(model, batch, mean_z, heads, heads_per_pass=3)  # chunks of 3: the last chunk is partial
    assert_no_hooks_left(model)
    slow = aie_loop(model, batch, mean_z, heads)
    assert torch.allclose(fast, slow, atol=1e-5)
    for i in (0, len(heads) - 1):
        assert abs(float(fast[i]) - _explicit_aie(model, batch, mean_z, *heads[i])) < 1e-5
    assert fast.abs().max() > 1e-4  # not vacuous
    return fast


def test_one_heads_aie_equals_an_explicit_patched_run(tiny_model):
    _check_against_explicit(tiny_model)


def test_gqa_model_aie_and_fv(toy_tokenizer):
    gqa = make_tiny_model(toy_tokenizer, n_heads=4, n_key_value_heads=2, positional_embedding_type="rotary",
                          normalization_type="RMS", act_fn="silu", gated_mlp=True)
    assert gqa.cfg.n_key_value_heads == 2
    aie = _check_against_explicit(gqa)
    res = AIEResult("toy/antonym", aie.reshape(gqa.cfg.n_layers, gqa.cfg.n_heads), _random_means(gqa), 0.1, 1.0, 5, 5, 3)
    fv = tv.function_vector(gqa, "toy/antonym", layer=1, top_k=3, aie=res)
    expect = sum(res.mean_z[l_, h] @ gqa.W_O[l_, h] for l_, h, _ in res.top(3))
    assert torch.allclose(fv.values[0], expect, atol=1e-5)


def test_fv_equals_the_w_o_mapped_sum_of_the_top_heads(tiny_model):
    n_l, n_h = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    aie = torch.tensor([[0.1, -0.2], [0.3, 0.05]])[:n_l, :n_h]
    res = AIEResult("toy/antonym", aie, _random_means(tiny_model), 0.1, 1.0, 5, 5, 3)
    assert [(l_, h) for l_, h, _ in res.top(2)] == [(1, 0), (0, 0)]
    fv = tv.function_vector(tiny_model, "toy/antonym", layer=1, top_k=2, aie=res)
    attn = [b.attn for b in tiny_model.blocks]
    expect = res.mean_z[1, 0] @ attn[1].W_O[0] + res.mean_z[0, 0] @ attn[0].W_O[0]
    assert fv.method == "fv" and fv.operation == "add" and [str(s) for s in fv.sites] == ["L1@-1"]
    assert torch.allclose(fv.values[0], expect, atol=1e-5)
    assert fv.meta["top_heads"][0][:2] == [1, 0]
    df = res.to_frame()
    assert list(df.sort_values("rank")["aie"])[:2] == pytest.approx([0.3, 0.1])
    assert res.plot().data[0].type == "heatmap"
    with pytest.raises(tv.errors.ConfigError, match="k must be"):
        res.top(0)


def test_head_aie_and_fv_on_the_toy_model(toy_model):
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    fv, aie = tv.function_vector(toy_model, splits.task, layer=1, shots=8, n_corrupt=6, splits=splits, top_k=6, return_aie=True)
    assert aie.n_corrupt == 6 and aie.n_clean >= 20 and tuple(aie.aie.shape) == (5, 4)
    clean, corrupt, _ = _clean_and_corrupted(toy_model, splits.task, splits, 8, 100, 6, 0)
    for c, x in zip(clean.demos, corrupt.demos):  # same demonstrations, labels permuted among them
        assert [d.fields for d in c] == [d.fields for d in x] and sorted(d.output for d in c) == sorted(d.output for d in x)
    assert any(c != x for c, x in zip(clean.demos, corrupt.demos))
    # the AIE of the top head matches the one-head reference on the same corrupted prompts
    (l_, h, v), = aie.top(1)
    assert abs(float(aie_loop(toy_model, corrupt.tokenize(toy_model), aie.mean_z, [(l_, h)])[0]) - v) < 1e-5
    ps = tv.make_prompts(splits, "test", k=0)
    assert tv.evaluate(toy_model, ps, intervention=tv.steering(toy_model, fv)).accuracy >= tv.evaluate(toy_model, ps).accuracy + 0.5


def test_fv_bad_inputs(tiny_model):
    with pytest.raises(tv.errors.ConfigError, match="shots"):
        tv.head_aie(tiny_model, "toy/antonym", shots=1)
    with pytest.raises(tv.errors.PromptError, match="none of the"):  # a random model answers nothing correctly
        tv.head_aie(tiny_model, "toy/antonym", shots=3)
