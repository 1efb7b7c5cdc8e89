"""Bad inputs, as a new user would try them: each gets a typed error whose message names the fix
(or a TvlensWarning where a result would be meaningless), and nothing the user had on disk changes.

Every test runs in a folder holding a good task vector, a good LTV checkpoint and a task CSV; the
``disk`` fixture fails the test if any byte, mode or file name there changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import warnings

import pytest
import torch

import tvlens as tv
from tests.test_vector import make_vector
from tvlens.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteError,
    OutputExistsError,
    PromptError,
    TaskFormatError,
    TaskNotFoundError,
    TvlensWarning,
)

QUICK = tv.LTVConfig(batch_size=8, epoch_size=32, max_epochs=2, patience=3, n_train=24, n_val=12)


# --- the user's folder ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def originals(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("originals")
    make_vector(tiny_model).save(d / "v.safetensors")
    tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=dataclasses.replace(QUICK, max_epochs=1),
                 progress=False, checkpoint=d / "run.ckpt")
    (d / "task.csv").write_text("input,output\n" + "".join(f"w{i},o{i}\n" for i in range(30)), encoding="utf-8")
    return d


def _snapshot(d):
    return {p.relative_to(d).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def disk(originals, tmp_path):
    """A copy of the user's files in tmp_path; after the test every one must be unchanged, none added."""
    for p in originals.iterdir():
        shutil.copy2(p, tmp_path / p.name)
    before = _snapshot(tmp_path)
    yield tmp_path
    assert _snapshot(tmp_path) == before, "a failing call changed the user's files"


def _header(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def _write(path, tensors, metadata):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


# --- tasks ------------------------------------------------------------------------------------


def test_contradictory_pairs_are_refused(disk):
    with pytest.raises(TaskFormatError, match=r"pairs 0 and 2 .* two different outputs 'cold' and 'warm'.*keep one answer"):
        tv.tasks.from_pairs("t", [("hot", "cold"), ("up", "down"), ("hot", "warm")])


def test_contradictory_csv_rows_are_refused_naming_the_file(disk):
    bad = disk / "conflict.csv"
    bad.write_text("input,output\nhot,cold\nhot,warm\n")
    before = bad.read_bytes()
    with pytest.raises(TaskFormatError, match=r"conflict\.csv.*rows 0 and 1.*keep one answer"):
        tv.tasks.from_file(bad)
    assert bad.read_bytes() == before
    bad.unlink()


def test_latin1_csv_names_the_file_and_the_fix(disk):
    bad = disk / "latin.csv"
    bad.write_bytes("input,output\ncafé,coffee\n".encode("latin-1"))
    with pytest.raises(TaskFormatError, match=r"latin\.csv.*not UTF-8.*line 2.*save it as UTF-8"):
        tv.tasks.from_file(bad)
    bad.unlink()


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_a_utf8_bom_is_accepted(disk, suffix):
    f = disk / f"bom{suffix}"
    body = {".csv": "input,output\nhot,cold\nup,down\n",
            ".json": json.dumps([{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"}]),
            ".jsonl": '{"input": "hot", "output": "cold"}\n{"input": "up", "output": "down"}\n'}[suffix]
    f.write_bytes(b"\xef\xbb\xbf" + body.encode())
    task = tv.tasks.from_file(f)
    assert [(e.inputs["x"], e.output) for e in task.examples] == [("hot", "cold"), ("up", "down")]
    f.unlink()


def test_identical_pairs_do_not_leak_into_the_test_split(disk):
    task = tv.tasks.from_pairs("same", [("hot", "cold")] * 40)
    with pytest.raises(PromptError, match=r"1 usable examples \(40 before dropping duplicates.*distinct inputs"):
        tv.make_splits(task)


def test_duplicate_csv_rows_are_dropped_before_splitting(disk, caplog):
    f = disk / "task.csv"
    dup = disk / "dup.csv"
    dup.write_text(f.read_text() + "".join(f"w{i},o{i}\n" for i in range(0, 30, 3)))
    with caplog.at_level("WARNING", logger="tvlens.prompts"):
        s = tv.make_splits(tv.tasks.from_file(dup))
    assert "dropped 10 duplicate" in caplog.text
    parts = [{e.fields for e in s[n]} for n in ("demo", "train", "val", "test")]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 30  # disjoint, every input once
    dup.unlink()


def test_contradictory_examples_of_a_built_task_are_left_out_with_a_warning(disk):
    from tvlens.tasks._task import Example, Task

    ex = [Example.of(f"o{i}", x=f"w{i}") for i in range(20)] + [Example.of("other", x="w3")]
    task = Task("built", "generation", tuple(ex))
    with pytest.warns(TvlensWarning, match=r"several different outputs.*w3.*Fix the data"):
        s = tv.make_splits(task)
    assert all(e.inputs["x"] != "w3" for n in ("demo", "train", "val", "test") for e in s[n])


def test_unknown_task_suggests_names(disk):
    with pytest.raises(TaskNotFoundError, match=r"Did you mean.*toy/antonym.*tvlens.tasks.names"):
        tv.tasks.get("toy/antonyms")


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,allowed", [
    ("lr", math.inf, "finite number > 0"),
    ("lr", math.nan, "finite number > 0"),
    ("lr", 0, "finite number > 0"),
    ("weight_decay", -0.1, "finite number >= 0"),
    ("init_range", math.nan, "finite number >= 0"),
    ("batch_size", 32.0, "integer >= 1"),
    ("eval_batch_size", 0, "integer >= 1"),
    ("max_epochs", 1.5, "integer >= 1"),
    ("n_train", -1, "integer >= 1"),
    ("patience", True, "integer >= 1"),
    ("seed", -1, "integer in 0.."),
    ("schedule", "cosine", "one of 'linear', 'constant'"),
    ("padding_side", "middle", "one of 'left', 'right'"),
    ("fast", "yes", "True or False"),
])
def test_ltv_config_names_the_field_and_its_range(disk, field, value, allowed):
    with pytest.raises(ConfigError, match=rf"LTVConfig\.{field} must be .*{allowed}"):
        tv.LTVConfig(**{field: value})


def test_ltv_config_from_dict_rejects_unknown_fields(disk):
    with pytest.raises(ConfigError, match=r"unknown LTVConfig field\(s\) \['learning_rate'\]; the fields are"):
        tv.LTVConfig.from_dict({"learning_rate": 0.1})


def test_toy_and_split_configs_name_the_field(disk):
    from tvlens.toy import ToyTrainConfig

    with pytest.raises(ConfigError, match=r"ToyTrainConfig\.lr must be a finite number > 0, got nan"):
        ToyTrainConfig(lr=math.nan)
    with pytest.raises(ConfigError, match=r"SplitConfig\.demo_frac must be a finite number > 0 and <= 1"):
        tv.SplitConfig(demo_frac=math.nan)


def test_train_ltv_rejects_a_config_that_is_not_an_ltvconfig(disk, tiny_model):
    with pytest.raises(ConfigError, match=r"config must be a tv.LTVConfig.*tv.LTVConfig\(lr="):
        tv.train_ltv(tiny_model, "toy/antonym", layers=1, config={"lr": 0.1}, progress=False)
    with pytest.raises(ConfigError, match=r"shots must be an integer >= 0"):
        tv.train_ltv(tiny_model, "toy/antonym", layers=1, shots=-1, config=QUICK, progress=False)


# --- sites ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers,match", [
    ("34", r"got the string '34'; write layers=\[3, 4\]"),
    (2.7, r"layers must be an integer, got float 2.7; write whole numbers"),
    ([1, True], r"layers must be an integer, got the bool True"),
    ([-1], r"layers count from 0"),
    ([9], r"layer 9 but the model has layers 0..1"),
])
def test_bad_layers_are_refused_before_training(disk, tiny_model, layers, match):
    with pytest.raises(PromptError, match=match):
        tv.train_ltv(tiny_model, "toy/antonym", layers=layers, config=QUICK, progress=False, checkpoint=disk / "new.ckpt")
    assert not (disk / "new.ckpt").exists()


def test_unparsable_site_string(disk):
    with pytest.raises(PromptError, match=r"write it as 'L<layer>@<position>'"):
        tv.Site.parse("L2@last")


# --- prompts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,match", [
    ({"n": -3}, r"n must be a positive integer .* got -3"),
    ({"n": 0}, r"n must be a positive integer"),
    ({"k": 1.5}, r"k must be an integer >= 0"),
])
def test_bad_prompt_counts(disk, kw, match):
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    with pytest.raises(PromptError, match=match):
        tv.make_prompts(splits, "test", **kw)


def test_evaluate_batch_size_zero(disk, tiny_model):
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", n=4)
    with pytest.raises(ConfigError, match=r"evaluate.batch_size must be an integer >= 1, got 0"):
        tv.evaluate(tiny_model, ps, batch_size=0)


def test_english_task_on_the_toy_model_warns(disk, toy_model):
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("antonym")), "test", n=4)
    with pytest.warns(TvlensWarning, match=r"unknown token .* accuracy is not meaningful .*use a toy/ task"):
        tv.evaluate(toy_model, ps)


# --- vectors ----------------------------------------------------------------------------------


def test_nonfinite_values_are_refused_at_construction(disk, tiny_model):
    v = make_vector(tiny_model)
    with pytest.raises(NonFiniteError, match=r"1 nan, 0 inf .* retrain with a lower lr"):
        v.with_values(v.values.clone().index_fill_(1, torch.tensor([0]), math.nan))


@pytest.mark.parametrize("scale,err,match", [
    (math.nan, NonFiniteError, r"scale must be a finite number, got nan; e.g. scale=1.0"),
    ("big", ConfigError, r"scale must be a finite number, got str 'big'"),
])
def test_bad_scale_is_refused_in_the_vector_and_in_steer(disk, tiny_model, scale, err, match):
    v = make_vector(tiny_model)
    with pytest.raises(err, match=match):
        dataclasses.replace(v, scale=scale)
    if isinstance(scale, float):  # (text never reaches steer's own check under the test-time type checker)
        with pytest.raises(err, match=match):
            with tv.steer(tiny_model, v, scale):
                pass


@pytest.mark.parametrize("change,match", [
    (lambda v: {"values": v.values.tolist()}, r"values must be a torch.Tensor .* torch.tensor\(values\)"),
    (lambda v: {"values": torch.empty(v.values.shape, device="meta")}, r"'meta' device"),
    (lambda v: {"values": v.values.long()}, r"floating point.*values.float\(\)"),
    (lambda v: {"sites": ((1, -1),)}, r"sites must be a tuple of tvlens.Site.*tv.Site\(layer, position\)"),
    (lambda v: {"out_of_range": "wrap"}, r"out_of_range must be 'error', 'skip' or 'clip'"),
])
def test_malformed_vectors_are_refused(disk, tiny_model, change, match):
    v = make_vector(tiny_model)
    with pytest.raises(CheckpointError, match=match):
        dataclasses.replace(v, **change(v))


def test_a_vector_that_turned_nan_is_not_saved_over_a_good_file(disk, tiny_model):
    v = make_vector(tiny_model)
    v.values[0, 0] = math.nan  # changed in place after construction
    with pytest.raises(NonFiniteError, match="refusing to save"):
        v.save(disk / "v.safetensors")


def test_save_without_overwrite_keeps_the_existing_file(disk, tiny_model):
    with pytest.raises(OutputExistsError, match=r"already exists; choose another path"):
        make_vector(tiny_model, seed=5).save(disk / "v.safetensors", overwrite=False)


def _tamper(disk, name, edit):
    meta, tensors = _header(disk / "v.safetensors")
    header = json.loads(meta["tvlens"])
    tensors, header = edit(tensors, header)
    _write(disk / name, tensors, {"tvlens": json.dumps(header)})
    return disk / name


@pytest.mark.parametrize("edit,match", [
    (lambda t, h: (t, {k: v for k, v in h.items() if k != "sites"}), r"lacks field 'sites'; .*save it again"),
    (lambda t, h: (t, {**h, "sites": [["two", -1]]}), r"site \['two', -1\] is not a pair of integers"),
    (lambda t, h: (t, {**h, "scale": "big"}), r"invalid tvlens header: scale must be a finite number, got str 'big'"),
    (lambda t, h: (t, {**h, "scale": math.nan}), r"unusable task vector: scale must be a finite number"),
    (lambda t, h: ({"values": torch.full_like(t["values"], math.inf)}, h), r"non-finite values .*inf"),
    (lambda t, h: (t, {**h, "d_model": "wide"}), r"'d_model' must be a non-negative integer"),
])
def test_a_damaged_vector_header_is_a_checkpoint_error_naming_the_file(disk, edit, match):
    bad = _tamper(disk, "bad.safetensors", edit)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*" + match):
        tv.TaskVector.load(bad)
    bad.unlink()


def test_a_corrupt_vector_file(disk):
    bad = disk / "corrupt.safetensors"
    bad.write_bytes((disk / "v.safetensors").read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"corrupt\.safetensors' is not a readable safetensors file"):
        tv.TaskVector.load(bad)
    bad.unlink()


def test_a_checkpoint_loaded_as_a_vector(disk):
    with pytest.raises(CheckpointError, match=r"run\.ckpt' is an LTV training checkpoint, not a task vector"):
        tv.TaskVector.load(disk / "run.ckpt")


def test_a_vector_without_fingerprint_warns_when_steering(disk, tiny_model):
    v = dataclasses.replace(make_vector(tiny_model), model_fingerprint="")
    with pytest.warns(TvlensWarning, match=r"no model fingerprint.*model_fingerprint=tv.fingerprint\(model\)"):
        with tv.steer(tiny_model, v):
            pass


def test_a_vector_applied_to_another_task_warns(disk, tiny_model):
    v = make_vector(tiny_model)  # trained on toy/antonym
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/color")), "test", n=4)
    with pytest.warns(TvlensWarning, match=r"trained on 'toy/antonym' is applied to task 'toy/color'.*transfer"):
        tv.evaluate(tiny_model, ps, intervention=tv.steering(tiny_model, v))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TvlensWarning)  # its own task: no warning
        tv.evaluate(tiny_model, tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", n=4),
                    intervention=tv.steering(tiny_model, v))


# --- checkpoints ------------------------------------------------------------------------------


def _resume(model, ckpt, config=dataclasses.replace(QUICK, max_epochs=1)):
    return tv.train_ltv(model, "toy/antonym", layers=1, config=config, progress=False, checkpoint=ckpt)


def test_a_corrupt_checkpoint(disk, tiny_model):
    bad = disk / "corrupt.ckpt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=r"corrupt\.ckpt' is not a readable safetensors file.*delete it to start over"):
        _resume(tiny_model, bad)
    assert bad.read_bytes() == b"\x00" * 100
    bad.unlink()


def test_a_vector_file_passed_as_checkpoint(disk, tiny_model):
    with pytest.raises(CheckpointError, match=r"v\.safetensors' is a task-vector file .*a path of its own"):
        _resume(tiny_model, disk / "v.safetensors")


def test_a_checkpoint_missing_its_tensors(disk, tiny_model):
    meta, tensors = _header(disk / "run.ckpt")
    _write(disk / "partial.ckpt", {"theta": tensors["theta"]}, meta)
    with pytest.raises(CheckpointError, match=r"partial\.ckpt' is damaged \(missing \['best_theta', 'rng'\]\); delete it"):
        _resume(tiny_model, disk / "partial.ckpt")
    (disk / "partial.ckpt").unlink()


def test_a_checkpoint_of_another_run(disk, tiny_model):
    with pytest.raises(CheckpointError, match=r"belongs to another run \(config: .*delete it or pass another checkpoint path"):
        _resume(tiny_model, disk / "run.ckpt", config=dataclasses.replace(QUICK, max_epochs=1, lr=1e-3))


def test_divergence_stops_with_the_last_good_checkpoint_kept(disk, tiny_model, monkeypatch):
    """A nan loss in epoch 1 raises NonFiniteError; the epoch-1 checkpoint resumes to the uninterrupted vector."""
    import tvlens.ltv._train as tr

    config = dataclasses.replace(QUICK, max_epochs=3)
    full = tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=config, progress=False)
    real = tr.make_objective
    calls = {"n": 0}

    def poisoned(*a, **k):
        obj = real(*a, **k)
        loss = obj.loss

        def nan_in_epoch_one(theta, idx):
            calls["n"] += 1
            out = loss(theta, idx)
            return (out[0] * math.nan, *out[1:]) if calls["n"] == 6 else out  # epoch 0 has 4 steps

        obj.loss = nan_in_epoch_one
        return obj

    monkeypatch.setattr(tr, "make_objective", poisoned)
    ckpt = disk / "diverge.ckpt"
    with pytest.raises(NonFiniteError, match=r"diverged at epoch 1, step 5: the training loss is not finite; the last good "
                                             r"state is kept in .*diverge\.ckpt.*Lower the learning rate"):
        tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=config, progress=False, checkpoint=ckpt)
    monkeypatch.setattr(tr, "make_objective", real)
    meta, _ = _header(ckpt)
    assert json.loads(meta["tvlens_ltv_checkpoint"])["epoch"] == 1
    resumed = tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=config, progress=False, checkpoint=ckpt)
    assert torch.equal(resumed.vector.values, full.vector.values)
    ckpt.unlink()


def test_a_huge_learning_rate_is_stopped_not_saved(disk, tiny_model):
    with pytest.raises(NonFiniteError, match=r"diverged at epoch 0.*nothing was saved.*Lower the learning rate \(lr=1e\+38"):
        tv.train_ltv(tiny_model, "toy/antonym", layers=1, config=dataclasses.replace(QUICK, lr=1e38, init_range=1e38),
                     progress=False, checkpoint=disk / "new.ckpt")
    assert not (disk / "new.ckpt").exists()


# --- CLI --------------------------------------------------------------------------------------


def _cli(capsys, *argv):
    from tvlens.cli._main import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _json_error(capsys, *argv):
    code, out, err = _cli(capsys, *argv, "--json")
    assert code == 2 and "Traceback" not in err and "Traceback" not in out
    return json.loads(out)["error"]


def test_cli_json_error_for_an_unknown_task(disk, capsys):
    e = _json_error(capsys, "eval", "--task", "antonyms-typo")
    assert e["type"] == "TaskNotFoundError" and "tvlens.tasks.names()" in e["message"] and "docs/errors.md" in e["hint"]


def test_cli_json_error_for_a_usage_error(disk, capsys):
    e = _json_error(capsys, "train", "--task", "antonym", "--out", str(disk / "x.safetensors"), "--layer", "two")
    assert e["type"] == "UsageError" and "invalid int value: 'two'" in e["message"] and "--help" in e["hint"]


def test_cli_refuses_to_overwrite_out(disk, capsys):
    e = _json_error(capsys, "train", "--task", "antonym", "--out", str(disk / "v.safetensors"))
    assert e["type"] == "OutputExistsError" and "pass --overwrite" in e["message"]


def test_cli_checkpoint_equal_to_out(disk, capsys):
    e = _json_error(capsys, "train", "--task", "antonym", "--out", str(disk / "new.safetensors"),
                    "--checkpoint", str(disk / "." / "new.safetensors"))
    assert e["type"] == "ConfigError" and "a path of its own" in e["message"]
    assert not (disk / "new.safetensors").exists()


def test_cli_corrupt_vector(disk, capsys):
    (disk / "corrupt.safetensors").write_bytes(b"not a file")
    e = _json_error(capsys, "eval", "--task", "antonym", "--vector", str(disk / "corrupt.safetensors"))
    assert e["type"] == "CheckpointError" and "corrupt.safetensors" in e["message"]
    (disk / "corrupt.safetensors").unlink()


def test_cli_bad_scale(disk, capsys):
    code, out, err = _cli(capsys, "eval", "--task", "antonym", "--vector", str(disk / "v.safetensors"),
                          "--scale", "nan", "--allow-other-model")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "NonFiniteError: scale must be a finite number, got nan" in err and "hint:" in err


def test_cli_unexpected_error_has_no_traceback_unless_debug(disk, capsys, monkeypatch):
    import tvlens.cli._commands as c

    def boom(args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(c, "cmd_tasks", boom)
    e = _json_error(capsys, "tasks")
    assert e == {"type": "RuntimeError", "message": "disk on fire",
                 "hint": "an unexpected error (possibly a bug in tvlens); rerun with --debug for the traceback and report it"}
    code, out, err = _cli(capsys, "tasks", "--debug")
    assert code == 2 and "Traceback" in err and "RuntimeError: disk on fire" in err
    code, out, err = _cli(capsys, "--debug", "tasks")
    assert code == 2 and "Traceback" in err
