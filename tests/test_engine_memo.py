"""The engine's kept unedited prefix (the keys and values of the columns before c0 and the suffix columns below the
lowest edited layer, reused across calls on the same prompts).

Oracles: a hit is bit-identical to computing again with the memo off; a hit runs no block over the prefix columns
and none below the edited layer; new weights, another thread count or an installed hook never see kept numbers; the
byte cap evicts.
"""

from __future__ import annotations

import copy

import pytest
import torch

import tvlens as tv
from tests.conftest import assert_no_hooks_left
from tvlens import _backend
from tvlens import _engine as engine


pytestmark = pytest.mark.skipif(not _backend.HAS_HOOKED, reason="the memo keeps HookedTransformer's KV cache; a bridge's prefix is recomputed per call")


@pytest.fixture()
def model(toy_model):
    m = copy.deepcopy(toy_model)  # the memo is per model: this test's own
    yield m
    engine.clear_memo(m)


@pytest.fixture(scope="module")
def prompts():
    return tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=3, n=12)


def _vector(model, layer=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tv.TaskVector(torch.randn(1, model.cfg.d_model, generator=g), (tv.Site(layer, -1),),
                         model_fingerprint=tv.fingerprint(model), task="toy/antonym")


def _count_prefix_passes(model, monkeypatch) -> list:
    """Calls of the model's embedding (each forward pass over some columns embeds them once), hook-free."""
    calls = []
    real = model.embed.forward
    monkeypatch.setattr(model.embed, "forward", lambda toks: calls.append(toks.shape[1]) or real(toks))
    return calls


def _count_block_calls(model, monkeypatch) -> list:
    """(layer, columns) of every block call, hook-free."""
    calls = []
    for lay, block in enumerate(model.blocks):
        real = block.forward
        monkeypatch.setattr(block, "forward", lambda x, *a, _l=lay, _f=real, **k: calls.append((_l, x.shape[1])) or _f(x, *a, **k))
    return calls


def test_a_hit_is_bit_identical_and_computes_no_prefix(model, prompts, monkeypatch):
    conditions = {"zero": None, "a": tv.steering(model, _vector(model, 1, 0)), "b": tv.steering(model, _vector(model, 2, 1))}
    monkeypatch.setattr(engine, "KV_MEMO_BYTES", 0)
    off = {lab: tv.evaluate(model, prompts, intervention=iv, batch_size=5) for lab, iv in conditions.items()}
    assert model not in engine._KV_MEMO
    monkeypatch.setattr(engine, "KV_MEMO_BYTES", 2**30)
    calls = _count_prefix_passes(model, monkeypatch)
    first = tv.evaluate(model, prompts, intervention=conditions["zero"], batch_size=5)
    width = prompts.tokenize(model).tokens.shape[1]
    assert len(calls) == 2 * 3 and sum(calls) == 3 * width  # per sub-batch: the prefix columns, then the last column
    assert len(engine._KV_MEMO[model]) == 3
    calls.clear()
    blocks = _count_block_calls(model, monkeypatch)
    on = {lab: tv.evaluate(model, prompts, intervention=iv, batch_size=5) for lab, iv in conditions.items()}
    assert calls == []  # every later evaluation of these prompts embeds nothing: the unedited part is kept
    # and runs only the last column from the vector's layer up (zero-shot: no block at all)
    L = model.cfg.n_layers
    assert sorted(blocks) == sorted([(lay, 1) for lay in range(1, L)] * 3 + [(lay, 1) for lay in range(2, L)] * 3)
    for lab in conditions:
        assert torch.equal(on[lab].gold_logprob, off[lab].gold_logprob), lab
        assert torch.equal(on[lab].predicted, off[lab].predicted), lab
    assert torch.equal(first.gold_logprob, off["zero"].gold_logprob)
    # the kept prefix serves every client of the engine: an ablation of the same prompts builds no prefix either
    from tvlens._hooks import AblateHeads

    calls.clear()
    blocks.clear()
    pre = engine.prefix(model, prompts.tokenize(model)[:5], layer=1)
    engine.run(pre, [AblateHeads(((1, 0),), positions=(-1,))], start=1)
    assert calls == [] and all(lay >= 1 and cols == 1 for lay, cols in blocks)


def test_new_weights_threads_or_hooks_are_never_served_kept_numbers(model, prompts, monkeypatch):
    batch = prompts.tokenize(model)
    fresh = lambda: engine.prefix(model, batch, layer=model.cfg.n_layers).final()  # noqa: E731

    def no_memo():
        monkeypatch.setattr(engine, "KV_MEMO_BYTES", 0)
        try:
            return fresh()
        finally:
            monkeypatch.setattr(engine, "KV_MEMO_BYTES", 2**30)

    before = fresh()
    assert len(engine._KV_MEMO[model]) == 1
    with torch.no_grad():
        model.blocks[0].attn.W_V.mul_(1.5)  # an in-place update: a new version, a miss
    after = fresh()
    assert torch.equal(after, no_memo()) and not torch.equal(after, before)
    assert len(engine._KV_MEMO[model]) == 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads != 1 else 2)  # another thread count: its own entry
        fresh()
        assert len(engine._KV_MEMO[model]) == 3
    finally:
        torch.set_num_threads(threads)
    v = _vector(model, 0)
    with tv.steer(model, v):  # a hook installed: nothing kept is served, nothing computed is kept
        steered = fresh()
        assert torch.equal(steered, no_memo())
        assert len(engine._KV_MEMO[model]) == 3
    assert not torch.equal(steered, after)
    assert_no_hooks_left(model)


def test_the_byte_cap_evicts_the_least_recently_used(model, prompts, monkeypatch):
    batch = prompts.tokenize(model)
    engine.prefix(model, batch[:4], layer=1)
    (kept,) = engine._KV_MEMO[model].values()
    monkeypatch.setattr(engine, "KV_MEMO_BYTES", 2 * kept.nbytes)
    engine.prefix(model, batch[4:8], layer=1)
    engine.prefix(model, batch[:4], layer=1)  # used again: now the most recent
    engine.prefix(model, batch[8:12], layer=1)  # over the cap: the least recently used (rows 4-8) leaves
    kept = list(engine._KV_MEMO[model])
    assert len(kept) == 2
    calls = _count_prefix_passes(model, monkeypatch)
    engine.prefix(model, batch[:4], layer=1)
    engine.prefix(model, batch[8:12], layer=1)
    assert calls == []
    engine.prefix(model, batch[4:8], layer=1)
    assert len(calls) == 2  # recomputed: the prefix columns, then the suffix
    engine.clear_memo(model)
    assert model not in engine._KV_MEMO


@pytest.mark.parametrize("arch", ["ln", "gqa_rms", "shortformer"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_kept_prefixes_equal_computed_ones_bit_for_bit(arch, padding, toy_tokenizer, prompts, monkeypatch):
    # every layer l0 a prefix may start at, on tiny models of each kind (rotary GQA, shortformer), both paddings:
    # the prefix built from a kept entry equals one computed with the memo off, bit for bit
    from tests.conftest import TINY_ARCHS, make_tiny_model

    archs = {**TINY_ARCHS, "shortformer": dict(n_layers=3, n_heads=2, positional_embedding_type="shortformer")}
    model = make_tiny_model(toy_tokenizer, seed=5, **archs[arch])
    batch = prompts.tokenize(model, padding_side=padding)
    for l0 in range(model.cfg.n_layers + 1):
        monkeypatch.setattr(engine, "KV_MEMO_BYTES", 0)
        off = engine.prefix(model, batch, layer=l0, prepare_rows=4)
        monkeypatch.setattr(engine, "KV_MEMO_BYTES", 2**30)
        engine.prefix(model, batch, layer=l0, prepare_rows=4)  # computed and kept (or, after l0 = 0, kept already)
        on = engine.prefix(model, batch, layer=l0, prepare_rows=4)
        assert on.c0 == off.c0 and on.l0 == off.l0 == l0
        assert set(on.resid) == set(off.resid)
        for lay in on.resid:
            assert torch.equal(on.resid[lay], off.resid[lay]), (l0, lay)
        for a, b in zip(on.keys + on.values, off.keys + off.values):
            assert (a is None and b is None) or torch.equal(a, b)
    assert len(engine._KV_MEMO[model]) == 3  # one entry per sub-batch serves every l0
    engine.clear_memo(model)
