import dataclasses

import pytest
import torch

import tvlens as tv
from tvlens.errors import CheckpointError

QUICK = tv.LTVConfig(batch_size=8, epoch_size=32, max_epochs=3, patience=3, n_train=24, n_val=12)


def test_paper_preset_is_the_papers_recipe():
    p = tv.LTVConfig.paper()
    assert (p.lr, p.weight_decay, p.init_range, p.batch_size, p.epoch_size, p.max_epochs, p.patience) == (5e-3, 0.01, 0.1, 1, 100, 10, 2)
    assert (p.schedule, p.n_train, p.n_val) == ("linear", 600, 400)
    assert p.scale_to_residual is False  # the paper's lr is absolute
    with pytest.raises(ValueError):
        tv.LTVConfig(batch_size=0)


def test_same_seed_gives_bit_identical_vectors(tiny_model):
    a = tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=QUICK, progress=False)
    b = tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=QUICK, progress=False)
    c = tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=dataclasses.replace(QUICK, seed=1), progress=False)
    assert torch.equal(a.vector.values, b.vector.values)
    assert not torch.equal(a.vector.values, c.vector.values)
    assert a.steps == 3 * 4 and len(a.history) == 3
    assert a.vector.meta["config"]["seed"] == 0 and a.vector.model_fingerprint == tv.fingerprint(tiny_model)


def test_fast_and_naive_training_agree(tiny_model):
    fast = tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=QUICK, progress=False)
    naive = tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=dataclasses.replace(QUICK, fast=False), progress=False)
    torch.testing.assert_close(fast.vector.values, naive.vector.values, atol=1e-4, rtol=1e-4)


def test_training_lowers_the_loss_and_leaves_weights_alone(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    res = tv.train_ltv(tiny_model, "toy/antonym", layers=0, config=dataclasses.replace(QUICK, max_epochs=6), progress=False)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    assert all(p.grad is None for p in tiny_model.parameters())
    assert len(res.to_frame()) == len(res.history)


def test_checkpoint_of_another_run_is_refused(tiny_model, tmp_path):

    ckpt = tmp_path / "run.safetensors"
    tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=dataclasses.replace(QUICK, max_epochs=1), progress=False, checkpoint=ckpt)
    assert ckpt.exists()
    # a different config must not silently resume
    with pytest.raises(CheckpointError, match="another run"):
        tv.train_ltv(tiny_model, "toy/antonym", layers=0, config=QUICK, progress=False, checkpoint=ckpt)


def test_interrupted_run_resumes_to_the_same_vector(tiny_model, tmp_path, monkeypatch):
    full = tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=QUICK, progress=False)
    ckpt = tmp_path / "run.safetensors"
    import tvlens.ltv._train as tr

    calls = {"n": 0}
    real = tr._accuracy

    def crash_in_epoch_two(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tr, "_accuracy", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=QUICK, progress=False, checkpoint=ckpt)
    monkeypatch.setattr(tr, "_accuracy", real)
    resumed = tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=QUICK, progress=False, checkpoint=ckpt)
    assert torch.equal(resumed.vector.values, full.vector.values)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
