"""The vector store: a hit is the freshly trained vector bit for bit; any changed input misses;
a corrupt entry is retrained, never trusted; concurrent writers leave one valid entry."""

import copy
import dataclasses
import json
import logging
import multiprocessing

import pytest
import torch

import tvlens as tv
from tvlens.store import VectorStore, ltv_key_fields

QUICK = tv.LTVConfig(batch_size=8, epoch_size=16, max_epochs=2, patience=2, n_train=16, n_val=8)
TASK = "toy/antonym"


def _train(model, store, **kw):
    kw = {"layers": 1, "config": QUICK, "progress": False, **kw}
    return tv.train_ltv(model, TASK, cache=store, **kw)


@pytest.fixture
def store(tmp_path):
    return VectorStore(tmp_path / "vectors")


def _entries(store):
    return sorted(store.root.glob("*/*.safetensors"))


def test_hit_equals_fresh_training_bit_for_bit(tiny_model, store):
    first = _train(tiny_model, store)
    assert not first.from_store and len(_entries(store)) == 1
    hit = _train(tiny_model, store)
    fresh = _train(tiny_model, False)  # no store: trained again
    assert hit.from_store and not fresh.from_store
    assert torch.equal(hit.vector.values, fresh.vector.values) and torch.equal(hit.vector.values, first.vector.values)
    assert hit.vector.values.dtype == fresh.vector.values.dtype
    assert hit.history == tuple(first.history) and hit.steps == first.steps and hit.best_epoch == first.best_epoch
    assert hit.val_accuracy == fresh.val_accuracy
    assert hit.vector.meta == fresh.vector.meta and hit.vector.sites == fresh.vector.sites
    assert hit.splits.train == fresh.splits.train
    assert tv.TaskVector.load(_entries(store)[0]).sites == fresh.vector.sites  # an entry is a TaskVector file too


def _fields(model, task=TASK, *, seed=0, config=QUICK, shots=0, layer=1):
    task = tv.tasks.get(task)
    return ltv_key_fields(model, task, sites=tv.site_grid([layer], [-1]), splits=tv.make_splits(task, seed=seed),
                          config=config, shots=shots, out_of_range="error", fingerprint=tv.fingerprint(model))


def test_every_input_changes_the_key(tiny_model):
    other_model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other_model.blocks[0].attn.W_Q[0, 0, 0] += 1e-3
    base = VectorStore.key(_fields(tiny_model))
    assert base == VectorStore.key(_fields(tiny_model))  # stable
    changed = [_fields(tiny_model, "toy/capital"), _fields(tiny_model, seed=1),
               _fields(tiny_model, config=dataclasses.replace(QUICK, lr=0.01)), _fields(tiny_model, shots=2),
               _fields(tiny_model, layer=0), _fields(other_model)]
    keys = [VectorStore.key(f) for f in changed]
    assert base not in keys and len(set(keys)) == len(keys)


def test_changed_config_task_split_or_model_misses(tiny_model, store):
    _train(tiny_model, store)
    assert _train(tiny_model, store).from_store
    other_model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other_model.blocks[0].attn.W_Q[0, 0, 0] += 1e-3
    misses = [
        _train(tiny_model, store, config=dataclasses.replace(QUICK, seed=1)),
        _train(tiny_model, store, splits=tv.make_splits(tv.tasks.get(TASK), seed=1)),
        tv.train_ltv(tiny_model, "toy/capital", layers=1, config=QUICK, progress=False, cache=store),
        _train(other_model, store),
    ]
    assert not any(r.from_store for r in misses)
    assert len(_entries(store)) == 5  # each miss stored its own entry
    task = tv.tasks.get(TASK)
    edited = dataclasses.replace(task, examples=task.examples[:-1])  # same name, other content
    assert not tv.train_ltv(tiny_model, edited, layers=1, config=QUICK, progress=False, cache=store).from_store


def test_out_of_range_is_shared_only_where_it_cannot_act(tiny_model, store):
    # every site at the last token: "error" and "clip" train the same vector, so they share one entry and the
    # hit carries the caller's choice; a site elsewhere keeps them apart
    err = _train(tiny_model, store, out_of_range="error")
    clip = _train(tiny_model, store, out_of_range="clip")
    fresh_clip = _train(tiny_model, False, out_of_range="clip")
    assert clip.from_store and clip.vector.out_of_range == "clip" and err.vector.out_of_range == "error"
    assert torch.equal(clip.vector.values, fresh_clip.vector.values) and clip.vector.meta == fresh_clip.vector.meta
    assert len(_entries(store)) == 1
    sites = (tv.Site(1, 1),)
    _train(tiny_model, store, sites=sites, out_of_range="error")
    assert not _train(tiny_model, store, sites=sites, out_of_range="clip").from_store
    assert len(_entries(store)) == 3


def _corrupt_values(path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        md, values = f.metadata(), f.get_tensor("values")
    values[0, 0] += 1.0  # a valid file whose values no longer match the checksum
    save_file({"values": values}, str(path), metadata=md)


@pytest.mark.parametrize("damage", ["truncate", "values", "header"])
def test_corrupt_entry_is_retrained_never_trusted(tiny_model, store, caplog, damage):
    first = _train(tiny_model, store)
    (path,) = _entries(store)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "values":
        _corrupt_values(path)
    else:  # an entry copied under another key's name
        data = path.read_bytes()
        other = _train(tiny_model, store, config=dataclasses.replace(QUICK, seed=5))
        assert not other.from_store
        (other_path,) = [p for p in _entries(store) if p != path]
        path.write_bytes(other_path.read_bytes())
        assert path.read_bytes() != data
    with caplog.at_level(logging.WARNING, logger="tvlens.store"):
        again = _train(tiny_model, store)
    assert not again.from_store and "unusable" in caplog.text
    assert torch.equal(again.vector.values, first.vector.values)
    assert _train(tiny_model, store).from_store  # the entry was replaced by a good one


def _put_many(root, fields, n):
    import torch as _torch

    import tvlens as _tv
    from tvlens.store import VectorStore as _Store

    _torch.set_num_threads(1)
    vec = _tv.TaskVector(values=_torch.arange(64, dtype=_torch.float32).reshape(1, 64), sites=(_tv.Site(1, -1),),
                         task="toy/antonym", model_fingerprint=fields["model_fingerprint"], d_model=64, n_layers=2)
    store = _Store(root)
    for _ in range(n):
        store.put(fields, vec, {"history": [], "val_accuracy": 0.5, "best_epoch": 0, "steps": 1, "seconds": 0.1})


def test_two_processes_writing_one_key_leave_one_valid_entry(tmp_path):
    fields = {"kind": "ltv", "model_fingerprint": "test:fp", "sites": [[1, -1]], "task": "toy/antonym"}
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_put_many, args=(str(tmp_path), fields, 15)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1 and not files[0].name.startswith(".")  # no temp file left behind
    hit = VectorStore(tmp_path).get(fields)
    assert hit is not None and torch.equal(hit.vector.values, torch.arange(64, dtype=torch.float32).reshape(1, 64))


def test_default_store_follows_env_and_no_cache(tmp_path, monkeypatch, tiny_model):
    from tvlens import store as st

    monkeypatch.setenv("TVLENS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(st.NO_CACHE_ENV, "1")
    assert st.default_store() is None and st.resolve(None) is None
    assert st.resolve(True).root == tmp_path / "vectors" and st.resolve(False) is None
    monkeypatch.delenv(st.NO_CACHE_ENV)
    assert st.default_store().root == tmp_path / "vectors"
    assert not _train(tiny_model, None).from_store and _train(tiny_model, None).from_store
    with st.disabled():
        assert not _train(tiny_model, None).from_store
    assert _train(tiny_model, None).from_store
    with pytest.raises(tv.errors.ConfigError, match="cache must be"):
        _train(tiny_model, 3)


def test_cli_no_cache(tmp_path, monkeypatch):
    from tvlens.cli._main import main

    monkeypatch.setenv("TVLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TVLENS_NO_CACHE")
    root = VectorStore().root
    args = ["train", "--model", "toy", "--task", TASK, "--layer", "1", "--json", "--overwrite"]
    assert main([*args, "--no-cache", "--out", str(tmp_path / "a.safetensors")]) == 0
    assert not list(root.glob("*/*.safetensors"))  # --no-cache: nothing stored
    assert main([*args, "--out", str(tmp_path / "b.safetensors")]) == 0
    assert len(list(root.glob("*/*.safetensors"))) == 1
    assert main([*args, "--out", str(tmp_path / "c.safetensors")]) == 0
    a, c = (tv.TaskVector.load(tmp_path / f"{n}.safetensors") for n in "ac")
    assert torch.equal(a.values, c.values)
    assert "TVLENS_NO_CACHE" not in __import__("os").environ  # --no-cache does not leak past the command
    json.dumps(a.meta)


def test_the_code_version_covers_modules_that_exist():
    """A training module renamed or removed must be renamed in the store's list too (else every command fails)."""
    from pathlib import Path

    import tvlens
    from tvlens import store

    root = Path(tvlens.__file__).parent
    missing = [m for m in store._TRAINING_MODULES if not (root / m).is_file()]
    assert not missing, f"store._TRAINING_MODULES names missing modules: {missing}"
    assert len(store.code_version()) == 16


# --- the function vector's head AIE: stored beside the vectors ---------------------------------

AIE_KW = {"shots": 4, "n_clean": 6, "n_corrupt": 3}


def _aie(model, store, **kw):
    from tvlens.baselines.function_vector import head_aie

    return head_aie(model, TASK, cache=store, **{**AIE_KW, **kw})


def _same_aie(a, b) -> bool:
    return (torch.equal(a.aie, b.aie) and torch.equal(a.mean_z, b.mean_z) and a.p_corrupt == b.p_corrupt
            and a.clean_accuracy == b.clean_accuracy and (a.n_clean, a.n_corrupt, a.shots, a.task) == (b.n_clean, b.n_corrupt, b.shots, b.task))


def test_stored_aie_equals_a_fresh_one_bit_for_bit(toy_model, store, monkeypatch):
    import sys

    fvmod = sys.modules["tvlens.baselines.function_vector"]  # the package's attribute of that name is the function
    first = _aie(toy_model, store)
    assert len(_entries(store)) == 1
    calls = []
    real = fvmod._head_aie
    monkeypatch.setattr(fvmod, "_head_aie", lambda *a: calls.append(a) or real(*a))
    hit = _aie(toy_model, store)
    assert calls == []  # served from the store: nothing recomputed
    fresh = _aie(toy_model, False)
    assert len(calls) == 1
    assert _same_aie(hit, fresh) and _same_aie(hit, first)
    # the FV built from a stored AIE is the FV built from a fresh one
    v_hit = tv.function_vector(toy_model, TASK, layer=1, top_k=3, aie=hit)
    v_fresh = tv.function_vector(toy_model, TASK, layer=1, top_k=3, aie=fresh)
    assert torch.equal(v_hit.values, v_fresh.values)


def test_changed_aie_inputs_miss(toy_model, store):
    _aie(toy_model, store)
    _aie(toy_model, store, shots=3)
    _aie(toy_model, store, seed=1)
    _aie(toy_model, store, n_corrupt=2)
    other = copy.deepcopy(toy_model)
    with torch.no_grad():
        other.blocks[1].attn.W_O[0, 0, 0] += 1e-3
    _aie(other, store)
    assert len(_entries(store)) == 5  # each change was a miss and a new entry


@pytest.mark.parametrize("damage", ["truncate", "values"])
def test_corrupt_aie_entry_is_recomputed(toy_model, store, caplog, monkeypatch, damage):
    first = _aie(toy_model, store)
    (path,) = _entries(store)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        tensors["aie"] = tensors["aie"] + 1.0
        save_file(tensors, str(path), metadata=meta)
    with caplog.at_level(logging.WARNING, logger="tvlens.store"):
        again = _aie(toy_model, store)
    assert "unusable" in caplog.text and _same_aie(again, first)
    assert len(_entries(store)) == 1
    import sys

    fvmod = sys.modules["tvlens.baselines.function_vector"]

    def recompute(*a):
        raise AssertionError("the replaced entry should serve this call")

    monkeypatch.setattr(fvmod, "_head_aie", recompute)
    assert _same_aie(_aie(toy_model, store), first)  # the entry was replaced by a good one
