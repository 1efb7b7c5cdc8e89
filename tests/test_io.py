"""The atomic writer: modes, overwrite refusal, failures leave the target alone, stale temps."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tvlens._io import atomic_write, atomic_write_dir, clean_stale_temps, stale_temps, temp_path
from tvlens.errors import OutputExistsError


def _current_umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    p = atomic_write(tmp_path / "f.bin", lambda tmp: tmp.write_bytes(b"x"))
    assert p.stat().st_mode & 0o777 == mode


def test_replacing_a_file_keeps_its_mode_and_writers_that_replace_the_temp_are_fixed_up(tmp_path, umask):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640

    def replacing_writer(tmp):  # like libraries that write elsewhere and rename over the path
        other = tmp.with_name("other")
        other.write_bytes(b"newer")
        other.chmod(0o600)
        os.replace(other, tmp)

    atomic_write(target, replacing_writer)
    assert target.read_bytes() == b"newer" and target.stat().st_mode & 0o777 == 0o640


def test_a_failing_writer_leaves_the_target_and_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"precious")

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_overwrite_false_refuses_an_existing_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"one"), overwrite=False)
    with pytest.raises(OutputExistsError, match="already exists"):
        atomic_write(target, lambda tmp: tmp.write_bytes(b"two"), overwrite=False)
    assert target.read_bytes() == b"one"

    def race(tmp):  # the file appears while we write: still not clobbered
        tmp.write_bytes(b"mine")
        target.write_bytes(b"theirs")

    target.unlink()
    with pytest.raises(OutputExistsError, match="appeared while saving"):
        atomic_write(target, race, overwrite=False)
    assert target.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_only_temps_of_dead_writers_of_the_same_target_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited and reaped: no such process now
    target = tmp_path / "v.safetensors"
    stale = target.with_name(f".v.safetensors.{dead_pid}.abcdef.tmp")
    live = target.with_name(f".v.safetensors.{os.getppid()}.abcdef.tmp")  # a running process
    other = tmp_path / f".w.safetensors.{dead_pid}.abcdef.tmp"  # another target's temp
    mine = temp_path(target)
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    assert mine.name.startswith(".v.safetensors.") and stale_temps(target) == [stale]
    atomic_write(target, lambda tmp: tmp.write_bytes(b"x"))
    assert not stale.exists() and live.exists() and other.exists()
    assert clean_stale_temps(target) == 0


def test_legacy_mkstemp_temps_are_cleaned_once_old(tmp_path):
    target = tmp_path / "run.ckpt"
    old = tmp_path / ".run.ckpt.k3j_x9q2"
    young = tmp_path / ".run.ckpt.a1b2c3d4.tmp"
    for p in (old, young):
        p.write_bytes(b"partial")
    os.utime(old, (1, 1))
    assert clean_stale_temps(target) == 1 and not old.exists() and young.exists()


def test_directories_are_replaced_whole(tmp_path):
    d = tmp_path / "ckpt"

    def fill(n):
        return lambda tmp: (tmp / "a").write_text(str(n))

    atomic_write_dir(d, fill(1))

    def private(tmp):  # like safetensors, which creates its files 0600
        (tmp / "a").write_text("2")
        (tmp / "a").chmod(0o600)

    atomic_write_dir(d, private)
    assert (d / "a").read_text() == "2"
    assert (d / "a").stat().st_mode & 0o777 == 0o666 & ~_current_umask()

    def fail(tmp):
        (tmp / "a").write_text("3")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(d, fail)
    assert (d / "a").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_vectors_and_checkpoints_are_readable_by_the_group(tmp_path, umask, tiny_model):
    import tvlens as tv
    from tests.test_vector import make_vector

    umask(0o022)
    v = make_vector(tiny_model).save(tmp_path / "v.safetensors")
    cfg = tv.LTVConfig(batch_size=8, epoch_size=8, max_epochs=1, n_train=8, n_val=8)
    tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=cfg, progress=False, checkpoint=tmp_path / "run.ckpt")
    assert v.stat().st_mode & 0o777 == 0o644 and (tmp_path / "run.ckpt").stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_vector_saves_loads_and_steers_a_cpu_model(tmp_path, tiny_model):
    import torch

    import tvlens as tv
    from tests.test_vector import make_vector

    v = make_vector(tiny_model)
    g = v.with_values(v.values.cuda())
    w = tv.TaskVector.load(g.save(tmp_path / "g.safetensors"))
    assert w.values.device.type == "cpu" and torch.equal(w.values, v.values)
    toks = tiny_model.to_tokens("kevi ->")
    with torch.no_grad(), tv.steer(tiny_model, g):
        a = tiny_model(toks)
    with torch.no_grad(), tv.steer(tiny_model, v):
        b = tiny_model(toks)
    assert torch.equal(a, b)
