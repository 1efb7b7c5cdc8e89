"""Bad inputs to the analyses, as a new user would try them (issue 22): each ends in a typed error
naming the fix, or a TvlensWarning where the result would describe something else."""

from __future__ import annotations

import warnings

import pytest
import torch

import tvlens as tv
from tvlens import analysis as ta
from tvlens.errors import ConfigError, DegenerateInputError, NonFiniteError, TvlensWarning


@pytest.fixture(scope="module")
def setup(toy_model):
    task = tv.tasks.get("toy/antonym")
    theta = torch.randn(1, toy_model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 4
    v = tv.TaskVector(theta, (tv.Site(2, -1),), task="toy/antonym", model_fingerprint=tv.fingerprint(toy_model),
                      d_model=toy_model.cfg.d_model, n_layers=toy_model.cfg.n_layers)
    ps = tv.make_prompts(tv.make_splits(task), "test", k=0, n=6)
    return toy_model, task, v, ps


def _nan_copy(v):
    bad = v.with_values(v.values.clone())
    bad.values[0, 3] = float("nan")  # edited in place after construction
    return bad


NAN_CALLS = {
    "saliency": lambda m, v, ps: ta.head_saliency(m, v, prompts=ps),
    "ov_products": lambda m, v, ps: ta.ov_products(m, v, prompts=ps),
    "ov_reconstruction": lambda m, v, ps: ta.ov_reconstruction(m, v, prompts=ps),
    "ablation": lambda m, v, ps: ta.head_ablation(m, v, prompts=ps, heads=[(2, 0)], n_random=1),
    "sinks": lambda m, v, ps: ta.attention_sinks(m, v, prompts=ps, key_heads=[(2, 0)], n_random=1),
    "lens": lambda m, v, ps: ta.logit_lens(m, None, prompts=ps, vectors=[v]),
    "cosines": lambda m, v, ps: ta.vector_cosines([v, v]),
    "transfer": lambda m, v, ps: ta.transfer_matrix(m, [v], n=4),
    "linear": lambda m, v, ps: ta.linear_propagation(m, v, prompts=ps, n_copies=8, n_heldout=4),
    "evaluate": lambda m, v, ps: tv.evaluate(m, ps, intervention=tv.steering(m, v)),
    "circuit": lambda m, v, ps: tv.circuit(m, v, prompts=ps).heads(),
}


@pytest.mark.parametrize("name", list(NAN_CALLS))
def test_a_vector_turned_nan_in_place_is_refused_at_use(setup, name):
    model, _, v, ps = setup
    with pytest.raises(NonFiniteError, match=r"non-finite values \(1 nan.*(reload|retrain)"):
        NAN_CALLS[name](model, _nan_copy(v), ps)


def test_an_inf_vector_in_steer_is_refused_when_the_block_starts(setup):
    model, _, v, ps = setup
    bad = v.with_values(v.values.clone())
    with tv.steer(model, v):
        pass
    bad.values[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="1 inf"):
        with tv.steer(model, bad):
            pass


@pytest.mark.parametrize("layers", ["34", [2.7], [True], [2, "3"], [], [7], [-1]])
def test_saliency_layers_are_strictly_typed_and_in_range(setup, layers):
    model, _, v, ps = setup
    with pytest.raises(ConfigError, match="layers"):
        ta.head_saliency(model, v, prompts=ps, layers=layers)


def test_ov_layers_below_the_injection_layer_are_refused(setup):
    model, _, v, ps = setup
    with pytest.raises(ConfigError, match=r"2\.\.4"):
        ta.ov_products(model, v, prompts=ps, layers=[1])
    with pytest.raises(ConfigError, match="str"):
        ta.ov_products(model, v, prompts=ps, layers="23")


@pytest.mark.parametrize("heads", [[(2, 0.9)], [(2.0, 1)], [(2, True)], ["21"], [(2, 0, 1)], "21"])
def test_float_or_text_heads_are_refused_not_truncated(setup, heads):
    model, _, v, ps = setup
    with pytest.raises(ConfigError, match="pairs"):
        ta.head_ablation(model, v, prompts=ps, heads=heads, n_random=1)


def test_a_pool_smaller_than_the_key_set_is_a_typed_error(setup):
    model, _, v, ps = setup
    with pytest.raises(DegenerateInputError, match="larger pool"):
        ta.head_ablation(model, v, prompts=ps, heads=[(2, 0), (2, 1), (3, 0)], pool=[(2, 0), (2, 1)], n_random=2)
    with pytest.raises(DegenerateInputError, match="larger pool"):
        ta.attention_sinks(model, v, prompts=ps, key_heads=[(2, 0), (2, 1), (3, 0)], pool=[(2, 0), (2, 1)], n_random=2)


@pytest.mark.parametrize("kw", [{"seed": 1.5}, {"seed": "0"}, {"fraction": float("nan")}, {"fraction": 1.5}, {"n_random": 2.0}])
def test_ablation_counts_seeds_and_fractions_are_typed(setup, kw):
    model, _, v, ps = setup
    with pytest.raises(ConfigError):
        ta.head_ablation(model, v, prompts=ps, heads=[(2, 0)], **{"n_random": 1, **kw})


def test_a_zero_vector_never_reaches_the_singular_solve(setup):
    model, _, v, ps = setup
    zero = v.with_values(torch.zeros_like(v.values))
    with pytest.raises(DegenerateInputError, match="zero vector.*non-zero"):
        ta.linear_propagation(model, zero, prompts=ps, n_copies=8, n_heldout=4)
    with pytest.raises(DegenerateInputError, match="zero vector"):
        ta.linear_propagation(model, v, prompts=ps, n_copies=8, n_heldout=4) if False else \
            ta.linear_propagation(model, v.with_values(v.values, scale=0.0), prompts=ps, n_copies=8, n_heldout=4)


def test_empty_conditions_are_typed_errors(setup):
    model, _, v, ps = setup
    with pytest.raises(DegenerateInputError, match="shots=.0, 8"):
        ta.logit_lens(model, "toy/antonym", shots=(), n=4)
    with pytest.raises(DegenerateInputError, match="at least one"):
        ta.rotation_vs_stretch(model, {}, "toy/antonym")
    from tvlens.analysis.ablation import AblationOptions

    with pytest.raises(DegenerateInputError, match="kinds is empty"):
        AblationOptions(kinds=())
    from tvlens._result import ConditionAccuracy

    with pytest.raises(DegenerateInputError, match="at least one condition"):
        ConditionAccuracy("t", (), torch.zeros(0, dtype=torch.long), 3)


def test_options_refuse_nan_floats():
    from tvlens.analysis.ablation import AblationOptions

    with pytest.raises(ConfigError, match="finite"):
        AblationOptions(fraction=float("nan"))


def test_a_vector_under_another_layers_key_is_refused(setup):
    model, _, v, ps = setup
    with pytest.raises(ConfigError, match=r"vectors_by_layer\[3\].*layer\(s\) \[2\].*its own layer"):
        ta.rotation_vs_stretch(model, {3: v}, prompts=ps)
    with pytest.raises(ConfigError, match="share a layer"):
        ta.rotation_vs_stretch(model, [v, v], prompts=ps)


def _tv_warnings(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fn()
    return [str(x.message) for x in w if issubclass(x.category, TvlensWarning)]


FOREIGN_CALLS = {k: NAN_CALLS[k] for k in ("saliency", "ov_products", "ov_reconstruction", "ablation", "sinks", "lens", "circuit")}


@pytest.mark.parametrize("name", list(FOREIGN_CALLS))
def test_another_tasks_vector_warns_in_every_analysis(setup, name):
    model, _, v, ps = setup
    other = v.with_values(v.values, task="toy/category")
    msgs = _tv_warnings(lambda: FOREIGN_CALLS[name](model, other, ps))
    assert any("trained on 'toy/category' is applied to task 'toy/antonym'" in m for m in msgs), msgs


@pytest.mark.parametrize("name", [*FOREIGN_CALLS, "transfer", "linear"])
def test_another_models_vector_warns_in_every_analysis(setup, name):
    model, _, v, ps = setup
    other = v.with_values(v.values, model_fingerprint="gpt2-like:L5-d128-h4-v374:sha256:0000000000000000")
    msgs = _tv_warnings(lambda: NAN_CALLS[name](model, other, ps))
    assert any("was made on model gpt2-like:L5-d128-h4-v374:sha256:0000000000000000, not on this model" in m for m in msgs), msgs


def test_analyze_heads_and_geometry_treat_a_foreign_file_the_same(setup, tmp_path, capsys):
    import json

    from tvlens.cli import main

    model, _, v, _ = setup
    path = tmp_path / "other.safetensors"
    v.with_values(v.values, model_fingerprint="gpt2-like:L5-d128-h4-v374:sha256:0000000000000000").save(path)
    before = path.read_bytes()
    runs = [["analyze", "heads", "--task", "toy/antonym", "--vector", str(path), "--n", "4", "--n-random", "1",
             "--ablation", "zero", "--json"],
            ["analyze", "geometry", "--vectors", str(path), str(path), "--json"]]
    for argv in runs:
        code = main(argv)
        doc = json.loads(capsys.readouterr().out)
        assert code == 0, doc
        assert any("not on this model" in w for w in doc["warnings"]), (argv[1], doc.get("warnings"))
        assert len(doc["warnings"]) == len(set(doc["warnings"])), "a warning repeated once per analysis"
    assert path.read_bytes() == before


@pytest.mark.parametrize("layers", ["34", [2.5], [True], [9]])
def test_sweep_layers_are_strictly_typed(toy_model, layers):
    from tvlens import baselines as tb

    with pytest.raises(ConfigError, match="layers"):
        tb.sweep(toy_model, "toy/antonym", layers=layers)


def test_compare_refuses_a_task_name_given_as_the_list(toy_model):
    from tvlens import baselines as tb

    with pytest.raises(ConfigError, match=r"write tasks=\['toy/antonym'\]"):
        tb.compare(toy_model, "toy/antonym")


def test_documented_option_bounds_match_what_the_analysis_accepts():
    """A share of heads of 0 picks no head: the options refuse it as documented ((0, 1]), and 1 (inclusive) is accepted."""
    from tvlens.analysis.ablation import AblationOptions
    from tvlens.analysis.linear import LinearOptions
    from tvlens.analysis.ov_layers import OVLayersOptions
    from tvlens.analysis.sinks import SinkOptions

    for opts in (AblationOptions, SinkOptions, OVLayersOptions):
        with pytest.raises(ConfigError, match=r"fraction must lie in \(0, 1\]"):
            opts(fraction=0.0)
        assert opts(fraction=1.0).fraction == 1.0
    with pytest.raises(ConfigError, match=r"noise must lie in \(0"):
        LinearOptions(noise=0.0)


@pytest.mark.parametrize("name", ["ablation", "sinks", "ov_layers"])
def test_fraction_at_its_inclusive_end_runs(setup, name):
    from tvlens.analysis import _registry as reg

    model, task, v, _ = setup
    spec = reg.get(name)
    ctx = reg.Context(model, "toy", task, 2, n=4, given_vector=v)
    kw = {"fraction": 1.0, **({"n_random": 1} if name != "ov_layers" else {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in reg.as_results(spec.run(ctx, spec.options(**kw))):
            r.payload()


@pytest.mark.parametrize("positions", ["-1", [-1.0], [], [True]])
def test_ablation_positions_are_strictly_typed(setup, positions):
    model, _, v, ps = setup
    with pytest.raises(ConfigError, match="positions"):
        ta.head_ablation(model, v, prompts=ps, heads=[(2, 0)], n_random=1, positions=positions)


def test_a_task_name_given_as_the_task_list_is_refused(setup):
    model, _, v, _ = setup
    with pytest.raises(ConfigError, match=r"write tasks=\['toy/antonym'\]"):
        ta.transfer_matrix(model, [v], tasks="toy/antonym", n=4)
    with pytest.raises(ConfigError, match=r"write tasks=\['toy/antonym'\]"):
        ta.train_vectors(model, "toy/antonym", seeds=(0,))
