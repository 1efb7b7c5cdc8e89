"""Behaviour of the embedded model (the shipped checkpoint) and of its trainer."""

import dataclasses

import numpy as np
import pytest
import torch

import tvlens as tv
from tvlens.toy import SequenceSampler, ToyTrainConfig, train_toy_model

ENTITY_MAPS = ["toy/capital", "toy/capitalize", "toy/antonym", "toy/successor", "toy/add3", "toy/double"]


@pytest.fixture(scope="module")
def baselines(toy_model):
    return tv.icl_baselines(toy_model, tv.tasks.toy_task_names(), shots=(0, 1, 8))


def test_load_model_toy_is_a_hooked_transformer(toy_model):
    from transformer_lens import HookedTransformer

    assert isinstance(toy_model, HookedTransformer)
    assert toy_model.cfg.n_layers == ToyTrainConfig().n_layers and toy_model.tokenizer is not None


def test_icl_works_and_zero_shot_does_not(baselines):
    df = baselines.to_frame()
    k8, k0 = df[df.k == 8], df[df.k == 0]
    assert k8.accuracy.mean() >= 0.95
    assert k0.accuracy.mean() <= 0.30
    assert (k0.set_index("task").loc[ENTITY_MAPS].accuracy <= 0.10).all()
    assert (df[df.k == 1].accuracy.mean() < k8.accuracy.mean())  # more demonstrations help


def test_instruction_pathway_is_learned(toy_model):
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    plain = tv.evaluate(toy_model, tv.make_prompts(splits, "test", k=0)).accuracy
    told = tv.evaluate(toy_model, tv.make_prompts(tv.tasks.with_instruction(splits), "test", k=0)).accuracy
    assert told >= 0.9 and plain <= 0.1


def test_sampler_is_seeded_and_masks_answers():
    cfg = ToyTrainConfig()
    a = SequenceSampler(cfg, np.random.default_rng(3)).batch(8)
    b = SequenceSampler(cfg, np.random.default_rng(3)).batch(8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    vocab = tv.toy.vocabulary()
    tokens, mask = a
    assert all(vocab[t] == "->" for t in tokens[mask].tolist())
    assert mask.sum(-1).eq(cfg.n_examples).all()


def test_training_is_deterministic():
    cfg = dataclasses.replace(ToyTrainConfig(), n_layers=1, d_model=32, n_heads=2, d_mlp=64, steps=3, batch_size=4, threads=None)
    a = train_toy_model(cfg, progress=False)
    b = train_toy_model(cfg, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert a.losses == b.losses


def test_training_restores_the_callers_thread_count():
    """``cfg.threads`` holds for the run only (it used to leak and make other tests depend on order)."""
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    cfg = dataclasses.replace(ToyTrainConfig(), n_layers=1, d_model=32, n_heads=2, d_mlp=64, steps=1, batch_size=2,
                              threads=other)
    try:
        train_toy_model(cfg, progress=False)
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_checkpoint_roundtrip(tmp_path):
    from tvlens.toy import load_toy_checkpoint, save_toy_checkpoint

    cfg = dataclasses.replace(ToyTrainConfig(), n_layers=1, d_model=32, n_heads=2, d_mlp=64, steps=1, batch_size=2)
    res = train_toy_model(cfg, progress=False)
    save_toy_checkpoint(res, tmp_path / "ck")
    save_toy_checkpoint(res, tmp_path / "ck")  # overwriting keeps a valid checkpoint
    back = load_toy_checkpoint(tmp_path / "ck")
    assert tv.fingerprint(back) == tv.fingerprint(res.model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_golden_values_of_the_shipped_checkpoint(toy_model, baselines):
    """Frozen numbers: a change to the checkpoint, prompts, splits or evaluation shows up here."""
    assert tv.fingerprint(toy_model) == "gpt2-like:L5-d128-h4-v374:sha256:2723a2eff2364e56"
    assert baselines.accuracy("toy/category", 0) == pytest.approx(3 / 25)
    assert baselines.accuracy("toy/is_antonym", 8) == pytest.approx(42 / 49)
    assert baselines.accuracy("toy/successor", 1) == pytest.approx(24 / 25)


@pytest.mark.parametrize("task", ["toy/antonym", "toy/capital", "toy/category"])
def test_ltv_at_the_middle_layer_generalises_to_unseen_queries(toy_model, task):
    splits = tv.make_splits(tv.tasks.get(task))
    res = tv.train_ltv(toy_model, splits.task, splits=splits, progress=False)  # default: L/2, -1
    assert res.vector.sites == (tv.Site(toy_model.cfg.n_layers // 2, -1),)
    test = tv.make_prompts(splits, "test", k=0)
    zero = tv.evaluate(toy_model, test).accuracy
    ltv = tv.evaluate(toy_model, test, intervention=tv.steering(toy_model, res.vector)).accuracy
    assert ltv >= 0.85 and ltv >= zero + 0.5
