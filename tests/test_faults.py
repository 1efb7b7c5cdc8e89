"""kill -9 during saves and during checkpointed training loses nothing.

Children are forked from the test process (the model is already loaded, so a child starts in
milliseconds) and killed with SIGKILL at seeded random moments. After every kill the files on
disk must load; the next save must remove the killed writers' temp files; a run resumed after
several kills must give the bit-identical vector of an uninterrupted run.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import pytest
import torch

import tvlens as tv

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"), reason="needs fork and SIGKILL"),
]

CONFIG = tv.LTVConfig(batch_size=8, epoch_size=128, max_epochs=40, patience=40, n_train=64, n_val=32)  # ~1-2 s: long enough to kill


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def _vector(model, seed: int, rows: int = 8) -> tv.TaskVector:
    g = torch.Generator().manual_seed(seed)
    # a wide vector (rows x 500k floats = 16 MB) so that a kill usually lands inside the write
    values = torch.randn(rows, 500_000, generator=g)
    return tv.TaskVector(values, tuple(tv.Site(i % model.cfg.n_layers, -1 - i) for i in range(rows)), task=f"seed{seed}")


def _save_forever(model, path):
    torch.set_num_threads(1)
    vs = [_vector(model, 1), _vector(model, 2)]
    i = 0
    while True:
        vs[i % 2].save(path)
        i += 1


def _train(model, ckpt, out):
    torch.set_num_threads(1)
    res = tv.train_ltv(model, "toy/antonym", layers=2, config=CONFIG, progress=False, checkpoint=ckpt)
    res.vector.save(out)


def _fork(target, *args):
    p = multiprocessing.get_context("fork").Process(target=target, args=args, daemon=True)
    p.start()
    return p


def _kill(p):
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)  # reap it: a zombie still counts as a live writer
    assert p.exitcode == -signal.SIGKILL


def _wait_for(cond, timeout=30.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "child made no progress"
        time.sleep(0.01)


def test_kill_during_save_keeps_a_whole_file_and_the_next_save_cleans_up(toy_model, tmp_path):
    rng = random.Random(0)
    path = tmp_path / "v.safetensors"
    known = {f"seed{s}": _vector(toy_model, s).values for s in (1, 2)}
    left_over = 0
    for _ in range(4):
        p = _fork(_save_forever, toy_model, path)
        _wait_for(path.exists)
        time.sleep(rng.uniform(0.05, 0.6))
        _kill(p)
        v = tv.TaskVector.load(path)  # whole: one of the two vectors, never a mix or a stub
        assert torch.equal(v.values, known[v.task])
        left_over += len(_temps(tmp_path))
    _vector(toy_model, 3, rows=1).save(path)
    assert _temps(tmp_path) == []  # the killed writers' temps are gone
    assert tv.TaskVector.load(path).task == "seed3"
    print(f"temp files left by kills and then cleaned: {left_over}")


def test_kill_during_checkpointed_training_resumes_bit_identically(toy_model, tmp_path):
    ref = _fork(_train, toy_model, None, tmp_path / "reference.safetensors")
    ref.join(120)
    assert ref.exitcode == 0
    reference = tv.TaskVector.load(tmp_path / "reference.safetensors")

    rng = random.Random(1)
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "resumed.safetensors"
    kills = 0
    while kills < 3:
        p = _fork(_train, toy_model, ckpt, out)
        _wait_for(lambda: ckpt.exists() or not p.is_alive())
        time.sleep(rng.uniform(0.0, 0.4))
        if not p.is_alive():
            break
        _kill(p)
        kills += 1
        from tvlens.ltv._train import _load_checkpoint  # the checkpoint left behind is whole

        with pytest.raises(tv.errors.CheckpointError, match="another run"):  # readable, and checked
            _load_checkpoint(ckpt, {})
    assert kills >= 2, "training finished before it could be interrupted; make CONFIG longer"
    p = _fork(_train, toy_model, ckpt, out)
    p.join(120)
    assert p.exitcode == 0
    resumed = tv.TaskVector.load(out)
    assert torch.equal(resumed.values, reference.values)
    assert resumed.meta["steps"] == reference.meta["steps"]
    assert _temps(tmp_path) == []
