"""Per-layer OV reconstruction: oracles (full forward with hand-written hooks, the final-residual
reconstruction's shared conditions), failures, and its presence in the CLI, the report and the circuit
with no edit outside its own file."""

from __future__ import annotations

import json

import pytest
import torch

import tvlens as tv
from tests.conftest import TINY_ARCHS, assert_no_hooks_left, make_tiny_model
from tvlens.analysis.ov import ov_products, ov_reconstruction
from tvlens.analysis.ov_layers import CONDITIONS, OVLayerReconstruction, _AddAtHook, ov_layer_reconstruction
from tvlens.errors import ConfigError

TASK = "toy/antonym"


@pytest.fixture(scope="module")
def toy_vector(toy_model):
    task = tv.tasks.get(TASK)
    return tv.train_ltv(toy_model, task, layers=[2], splits=tv.make_splits(task, seed=0), config=tv.LTVConfig(seed=0),
                        progress=False).vector


@pytest.fixture(scope="module")
def toy_prompts():
    return tv.make_prompts(tv.make_splits(tv.tasks.get(TASK), seed=0), "test", k=0, seed=0)


def _full_forward_correct(model, prompts, writes: dict[int, torch.Tensor]) -> int:
    """Oracle: a plain TransformerLens forward with ``writes[l]`` [d_model] added to hook_attn_out at each prompt's last token."""
    batch = prompts.tokenize(model)
    rows = torch.arange(len(batch))

    def hook(act, hook):
        layer = int(hook.name.split(".")[1])
        act = act.clone()
        act[rows, batch.last_index] += writes[layer].to(act.dtype)
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(batch.tokens, attention_mask=batch.attention_mask,
                                      fwd_hooks=[(f"blocks.{lay}.hook_attn_out", hook) for lay in writes])
    pred = logits[rows, batch.last_index].argmax(-1)
    return int((pred == batch.answer_ids).sum())


def test_folded_conditions_equal_a_full_forward_with_hooks(toy_model, toy_vector, toy_prompts):
    heads = [(2, 1), (3, 0), (4, 3)]
    res = ov_layer_reconstruction(toy_model, toy_vector, prompts=toy_prompts, heads=heads, ln="folded")
    assert isinstance(res, OVLayerReconstruction) and res.conditions == CONDITIONS and res.n == len(toy_prompts)
    prod = ov_products(toy_model, toy_vector, ln="folded").products  # [layer, head, d_model], no prompt-dependent scale
    key = {lay: sum(prod[a, b] for a, b in heads if a == lay) for lay in {a for a, _ in heads}}
    every = {lay: prod[lay].sum(0) for lay in range(2, toy_model.cfg.n_layers)}
    assert int(res.correct[CONDITIONS.index("key_heads")]) == _full_forward_correct(toy_model, toy_prompts, key)
    assert int(res.correct[CONDITIONS.index("all_heads")]) == _full_forward_correct(toy_model, toy_prompts, every)
    assert_no_hooks_left(toy_model)


def test_shared_conditions_equal_the_final_residual_reconstruction(toy_model, toy_vector, toy_prompts):
    res = ov_layer_reconstruction(toy_model, toy_vector, prompts=toy_prompts, heads=[(2, 0)])
    rec = ov_reconstruction(toy_model, toy_vector, prompts=toy_prompts)
    i = CONDITIONS.index
    assert int(res.correct[i("zero_shot")]) == round(rec.zero_shot * rec.n) and int(res.correct[i("ltv")]) == round(rec.ltv * rec.n)
    assert res.accuracy("ltv") > res.accuracy("zero_shot")  # the vector works on this task
    assert res.key_heads == ((2, 0),) and res.write_norm > 0


@pytest.mark.parametrize("arch", sorted(TINY_ARCHS))
def test_attn_out_edit_suffix_run_equals_full_forward(toy_tokenizer, arch, caplog):
    """The edit the analysis uses, run through the engine's last-column suffix, equals the full forward."""
    from tvlens import _engine as engine

    model = make_tiny_model(toy_tokenizer, seed=3, **TINY_ARCHS[arch])
    if reason := engine.cache_unsupported_reason(model):
        pytest.skip(f"no suffix path on this model: {reason}")
    batch = tv.make_prompts(tv.make_splits(tv.tasks.get(TASK), seed=0), "test", k=2, n=5).tokenize(model)
    values = torch.randn(len(batch), model.cfg.d_model)
    edit = _AddAtHook(tv.Site(1, -1), values, hook="blocks.1.hook_attn_out")
    pre = engine.prefix(model, batch, positions=(-1,), layer=1)
    with torch.no_grad(), caplog.at_level("INFO", logger="tvlens._engine"):
        fast = engine.final_logits(model, engine.run(pre, [edit], start=1).last())
    assert "full forward" not in caplog.text  # the suffix path, not the engine's fallback
    with torch.no_grad():
        full = engine.run(engine.prefix(model, batch, positions=None), [edit], start=0).last()
        slow = engine.final_logits(model, full)
    assert pre.c0 > 0  # a real suffix: the prefix holds every column before the last tokens
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert_no_hooks_left(model)


def test_bad_inputs(toy_model, toy_vector, toy_prompts):
    with pytest.raises(ConfigError, match="before the injection layer"):
        ov_layer_reconstruction(toy_model, toy_vector, prompts=toy_prompts, heads=[(0, 1)])
    other = tv.TaskVector(toy_vector.values, (tv.Site(2, -2),), model_fingerprint=toy_vector.model_fingerprint)
    with pytest.raises(ConfigError, match="last position"):
        ov_layer_reconstruction(toy_model, other, prompts=toy_prompts)
    with pytest.raises(ConfigError, match="ln"):
        ov_layer_reconstruction(toy_model, toy_vector, prompts=toy_prompts, ln="none")


def test_registered_in_the_cli_the_report_and_the_circuit(toy_model, toy_vector, toy_prompts, capsys, tmp_path):
    """Its one file is enough: the CLI subcommand, the report section and Circuit.analysis come from its declaration."""
    from tvlens.analysis import analyses
    from tvlens.cli._main import main
    from tvlens.viz.report import build_report

    assert "ov_layers" in [a.name for a in analyses()]
    path = toy_vector.save(tmp_path / "v.safetensors")
    assert main(["analyze", "ov_layers", "--task", TASK, "--vector", str(path), "--n", "12", "--fraction", "0.25", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    (res,) = p["results"]
    assert p["analysis"] == "ov_layers" and p["options"] == {"fraction": 0.25, "ln": "actual"}
    assert list(res["conditions"]) == list(CONDITIONS) and res["n"] == 12 and len(res["key_heads"]) == 3
    assert main(["analyze", "ov_layers", "--task", TASK, "--ln", "gaussian", "--json"]) == 2  # a Literal option's choices
    assert json.loads(capsys.readouterr().out)["error"]["type"] == "UsageError"

    rep = build_report(toy_model, TASK, sections=["ov_layers"], n=12, progress=False)
    assert rep.sections[0].ok and rep.sections[0].group == "Heads", rep.sections[0].error
    assert isinstance(rep.sections[0].results[0], OVLayerReconstruction)

    c = tv.circuit(toy_model, toy_vector, prompts=toy_prompts.subset(slice(0, 12)), fraction=0.25)
    assert "ov_layers" in c.analyses()
    got = c.analysis("ov_layers", fraction=0.25)
    direct = ov_layer_reconstruction(toy_model, toy_vector, prompts=c.prompts, heads=c.key_heads())
    assert torch.equal(got.correct, direct.correct) and got.key_heads == tuple(c.key_heads())
    assert c.analysis("ov_layers", fraction=0.25) is got  # computed once
    assert torch.equal(got.correct, torch.tensor([res["conditions"][k]["correct"] for k in CONDITIONS]))  # the CLI's numbers
