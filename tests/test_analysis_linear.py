"""Linear propagation, polar decomposition, rotation vs stretch: oracles on tiny random models (a linear
toy, LN and GQA models), behaviour on the embedded model, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import tvlens as tv
from tvlens import _backend
from tests.conftest import assert_no_hooks_left, make_tiny_model
from tvlens.analysis import LinearFit, RotationStretch, lens_states, linear_propagation, polar, rotation_vs_stretch
from tvlens.analysis.linear import final_states, ridge_fit
from tvlens.analysis.rotation import transition_layer
from tvlens.errors import ConfigError


def _vector(model, layer, values):
    return tv.TaskVector(values.reshape(1, -1).float(), (tv.Site(layer, -1),), task="toy/category",
                         model_fingerprint=tv.fingerprint(model), d_model=model.cfg.d_model, n_layers=model.cfg.n_layers)


def _prompts(n=10, k=0, split="test"):
    return tv.make_prompts(tv.make_splits(tv.tasks.get("toy/category")), split, k=k, n=n)


@pytest.mark.parametrize("seed", [0, 1])
def test_polar_reconstructs(seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(12, 12, generator=g, dtype=torch.float64)
    if seed == 1:
        W[:, :3] = 0  # singular: S is PSD with zero eigenvalues, Q still orthogonal
    Q, S = polar(W)
    torch.testing.assert_close(Q @ S, W, atol=1e-10, rtol=0)
    torch.testing.assert_close(Q.T @ Q, torch.eye(12, dtype=W.dtype), atol=1e-10, rtol=0)
    torch.testing.assert_close(S, S.T)
    assert torch.linalg.eigvalsh(S).min() > -1e-10
    with pytest.raises(ConfigError, match="square"):
        polar(torch.randn(3, 4))


def test_ridge_fit_recovers_a_matrix_and_transition_rule():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(8, 8, generator=g)
    X = torch.randn(40, 8, generator=g)
    torch.testing.assert_close(ridge_fit(X, X @ A.T, 0.0), A, atol=1e-4, rtol=1e-4)
    assert transition_layer([0, 3, 6, 9], [0.1, 0.7, 0.4, 0.8]) == 9  # must hold at every later layer
    assert transition_layer([0, 3, 6, 9], [0.1, 0.7, 0.6, 0.8]) == 3
    assert transition_layer([0, 3], [0.1, 0.2]) is None


@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_fit_recovers_the_exact_matrix_of_a_linear_toy(toy_tokenizer, kind):
    """Linear toy: attention-only, no LayerNorm, W_Q = 0 (uniform attention over each prompt's N real
    tokens). A vector at the last token then moves the final state by exactly prod_k (I + OV_k^T / N)."""
    extra = {"n_key_value_heads": 2, "n_heads": 4} if kind == "gqa" else {}
    model = make_tiny_model(toy_tokenizer, n_layers=3, attn_only=True, normalization_type=None, seed=3, **extra)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.zero_()
            block.attn.b_Q.zero_()
    d, layer = model.cfg.d_model, 1
    test = _prompts(n=8)
    lengths = test.tokenize(model).lengths.double()
    w_v = _backend.per_query_head(model, "W_V")  # [layer, head, d_model, d_head] on either backend (the bridge groups GQA)
    ov = [torch.einsum("hmd,hdn->mn", w_v[k], model.W_O[k]).double()  # [d_model, d_model]
          for k in range(layer, model.cfg.n_layers)]
    per_query = []
    for n in lengths:
        m = torch.eye(d, dtype=torch.float64)
        for o in ov:
            m = (torch.eye(d, dtype=torch.float64) + o.T / n) @ m
        per_query.append(m)
    W_true = torch.stack(per_query).mean(0).float()
    vec = _vector(model, layer, torch.randn(d))
    fit = linear_propagation(model, vec, prompts=test, n_queries=8, n_copies=2 * d, ridge=0.0)
    assert isinstance(fit, LinearFit) and fit.W.shape == (d, d)
    assert (fit.W - W_true).abs().max() < 1e-3 * W_true.abs().max()
    assert fit.fit_r2 > 0.9999
    bars = fit.plot().data[0]  # the figure shows this fit's accuracies, in this order
    assert list(bars.y) == [fit.zero_shot_acc, fit.injected_acc, fit.reconstructed_acc, fit.mean_shift_acc]
    assert_no_hooks_left(model)


@pytest.mark.parametrize("kind", ["ln", "gqa"])
def test_prefix_cached_copies_equal_full_forward_injection(toy_tokenizer, kind):
    extra = {"n_key_value_heads": 2, "n_heads": 4, "normalization_type": "RMS", "positional_embedding_type": "rotary"} if kind == "gqa" else {}
    model = make_tiny_model(toy_tokenizer, n_layers=3, seed=4, **extra)
    ps = _prompts(n=6, k=2)  # k-shot: prompts of several lengths, left padded
    thetas = torch.randn(3, model.cfg.d_model)
    vec = _vector(model, 1, thetas[0])
    fast = final_states(model, vec, ps, thetas)  # [copy, query, d_model]
    batch = ps.tokenize(model)
    for c in range(3):
        edit = tv.interventions.AddAt((tv.Site(1, -1),), thetas[c : c + 1])
        full = lens_states(model, batch, intervention=edit)[-1]
        torch.testing.assert_close(fast[c], full, atol=1e-4, rtol=1e-4)
    assert (fast[0] - fast[1]).abs().max() > 1e-3
    assert_no_hooks_left(model)


def test_bad_inputs(toy_model):
    two = tv.TaskVector(torch.zeros(2, toy_model.cfg.d_model), (tv.Site(1, -1), tv.Site(2, -1)),
                        model_fingerprint=tv.fingerprint(toy_model))
    with pytest.raises(ConfigError, match="one-site"):
        linear_propagation(toy_model, two, "toy/category")
    one = _vector(toy_model, 1, torch.ones(toy_model.cfg.d_model))
    with pytest.raises(ConfigError, match="task"):
        linear_propagation(toy_model, one)
    with pytest.raises(ConfigError, match="noise"):
        linear_propagation(toy_model, one, "toy/category", noise=0.0)
    with pytest.raises(ConfigError, match="at least one vector"):
        rotation_vs_stretch(toy_model, {}, "toy/category")


def test_linear_propagation_and_rotation_on_the_embedded_model(toy_model):
    task = "toy/category"
    vecs = {layer: tv.train_ltv(toy_model, task, layers=[layer], progress=False).vector for layer in (1, 3)}
    res = rotation_vs_stretch(toy_model, vecs, task, n=25)
    assert isinstance(res, RotationStretch)
    df = res.to_frame()
    assert df["layer"].tolist() == [1, 3]
    for r in res.rows:
        assert r["injected_acc"] > 0.8 > r["zero_shot_acc"]
        assert abs(r["injected_acc"] - r["reconstructed_acc"]) <= 0.1  # linearity within 10 points
        assert r["fit_r2"] > 0.5
        assert r["alignment_Qtheta"] > r["alignment_theta"]  # the rotation points theta at the labels
    assert res.rows[1]["cos_theta_Qtheta"] > res.rows[0]["cos_theta_Qtheta"]  # more stretch, less rotation later
    # the injected accuracy is real injection: it matches tv.evaluate with the vector
    splits = tv.make_splits(tv.tasks.get(task))
    ev = tv.evaluate(toy_model, tv.make_prompts(splits, "test", n=25), intervention=tv.steering(toy_model, vecs[1]))
    assert res.rows[0]["injected_acc"] == pytest.approx(ev.accuracy)
    payload = json.loads(json.dumps(res.payload()))
    assert set(payload["layers"][0]) >= {"layer", "injected_acc", "reconstructed_acc", "fit_r2", "cos_theta_Qtheta",
                                         "alignment_theta", "alignment_Qtheta"}
    assert len(res.plot().data) == 7
    assert RotationStretch.from_json(res.to_json()).rows == res.rows
    assert_no_hooks_left(toy_model)


def test_cli_analyze_linear_and_lens_json(capsys, tmp_path):
    from tvlens.cli._main import main

    html = tmp_path / "linear.html"
    assert main(["analyze", "linear", "--task", "toy/category", "--layers", "1", "2", "--n-copies", "140",
                 "--json", "--html", str(html), "--save-vectors", str(tmp_path / "v")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in out["layers"]] == [1, 2]
    assert isinstance(out["transition_layer"], int) and isinstance(out["icl_beats_zero_shot_layer"], int)
    assert set(out["layers"][0]) >= {"injected_acc", "reconstructed_acc", "fit_r2", "cos_theta_Qtheta",
                                     "alignment_theta", "alignment_Qtheta"}
    page = html.read_text()
    assert "plotly" in page and "<script src=" not in page  # offline: plotly.js inline
    assert main(["analyze", "lens", "--task", "toy/category", "--vector", str(tmp_path / "v" / "ltv_L1.safetensors"), "--json"]) == 0
    lens = json.loads(capsys.readouterr().out)
    assert lens["conditions"] == ["zero-shot", "8-shot ICL", "θ@L1"] and len(lens["accuracy"]["θ@L1"]) == 6
    assert lens["accuracy"]["θ@L1"][-1] == out["layers"][0]["injected_acc"]  # the saved vector is the one analysed
    assert lens["decoded"][0]["vector"] == "θ@L1" and len(lens["decoded"][0]["through_ln"]) == 10
    assert main(["analyze", "linear", "--task", "toy/category", "--layers", "9", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["type"] == "ConfigError"


def test_bench_linear_copies_entry(tiny_model):
    from tvlens.bench import bench_linear_copies

    d = bench_linear_copies("tiny_linear", tiny_model, _prompts(n=4, k=2), 1, copies=3, min_seconds=0.0).as_dict()
    assert {"name", "baseline_s", "fast_s", "ratio", "batch"} <= set(d) and d["batch"] == 12
    assert d["max_abs_diff"] < 1e-4  # the prefix-cached states are the full forward's
    json.dumps(d)


@pytest.mark.parametrize("padding_arch", ["shortformer", "gqa_rms"])
def test_final_states_equal_full_forwards_with_a_per_row_vector(toy_tokenizer, padding_arch):
    """The copies' suffix runs (engine replicas) equal full forwards, shortformer positions included."""
    from tests.conftest import TINY_ARCHS
    from tvlens._hooks import AddPerRow, Cache, Span, intervene

    kw = TINY_ARCHS.get(padding_arch) or dict(n_layers=3, n_heads=2, positional_embedding_type="shortformer")
    model = make_tiny_model(toy_tokenizer, seed=4, **kw)
    prompts = _prompts(n=6, k=2)
    v = _vector(model, 1, torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)))
    thetas = 3 * torch.randn(3, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    got = final_states(model, v, prompts, thetas)  # [copy, query, d_model]
    batch = prompts.tokenize(model, padding_side="left")
    n, final = len(batch), f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    for c in range(len(thetas)):
        store = Cache((final,))
        with torch.no_grad(), intervene(model, AddPerRow(tv.Site(1, -1), thetas[c].expand(n, -1)), store,
                                        span=Span(batch.first_index, batch.last_index)):
            model(batch.tokens, attention_mask=batch.attention_mask, return_type=None)
        ref = store.store[final][torch.arange(n), batch.last_index]
        assert (got[c] - ref).abs().max() < 1e-5
    assert (got[0] - got[1]).abs().max() > 1e-3
    assert_no_hooks_left(model)


def test_linear_surrogate_figure_8b_oracles(toy_model):
    """Figure 8B: at θ's site the shift is θ' itself (W = I, surrogate = real state); after the last block the surrogate
    is linear_propagation's W θ at the end (same copies, same seed); a zero vector is refused."""
    import dataclasses

    from tvlens.analysis import AnalysisContext, get_analysis
    from tvlens.analysis.linear import LinearSurrogate, linear_surrogate

    vec = tv.train_ltv(toy_model, "toy/antonym", layers=[1], progress=False).vector
    sur = linear_surrogate(toy_model, vec, "toy/antonym", n=25)
    fit = linear_propagation(toy_model, vec, "toy/antonym", n=25)
    with pytest.deprecated_call(match=r"linear_propagation\(n_test=\.\.\.\) is now linear_propagation\(n=\.\.\.\)"):
        old = linear_propagation(toy_model, vec, "toy/antonym", n_test=25)  # the old name still works
    assert old.n_test == fit.n_test == 25 and torch.equal(old.W, fit.W)
    rows = sur.rows
    assert [r["point"] for r in rows] == ["injection", "L1 out", "L2 out", "L3 out", "L4 out"]
    assert rows[0]["surrogate_acc"] == rows[0]["injected_acc"]  # W = I at the site: the surrogate is the real state
    last = rows[-1]
    assert last["surrogate_acc"] == pytest.approx(fit.reconstructed_acc)
    assert last["injected_acc"] == pytest.approx(fit.injected_acc) and last["zero_shot_acc"] == pytest.approx(fit.zero_shot_acc)
    assert last["fit_r2"] == pytest.approx(fit.fit_r2, abs=1e-4)
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ("surrogate_acc", "injected_acc", "zero_shot_acc"))
    assert len(sur.to_frame()) == len(rows) and len(sur.plot().data) == 3
    zero = dataclasses.replace(vec, values=vec.values * 0)
    with pytest.raises(tv.errors.DegenerateInputError):
        linear_surrogate(toy_model, zero, "toy/antonym", n=5)
    spec = get_analysis("linear")  # the registered option: default off, on gives both results
    assert spec.options().surrogate is False
    ctx = AnalysisContext(toy_model, "toy", tv.tasks.get("toy/antonym"), None, given_vector=vec)
    out = spec.run(ctx, spec.options(surrogate=True))
    assert [type(r) for r in out] == [LinearFit, LinearSurrogate]
    assert [r["point"] for r in out[1].rows] == [r["point"] for r in sur.rows]


def test_a_stored_fit_equals_a_fresh_one_and_any_changed_input_misses(toy_model, tmp_path, monkeypatch):
    # the fit through the vector store: a hit is the fresh fit bit for bit and runs no copy through the model; another
    # option, vector, task or a corrupt entry is fitted afresh; the caller's own prompts are never keyed
    import sys

    from tvlens.store import VectorStore

    lmod = sys.modules["tvlens.analysis.linear"]
    store = VectorStore(tmp_path / "store")
    g = torch.Generator().manual_seed(0)
    v = _vector(toy_model, 2, torch.randn(toy_model.cfg.d_model, generator=g))
    opts = dict(n_copies=40, n_heldout=8, n=12)
    fresh = linear_propagation(toy_model, v, "toy/category", cache=False, **opts)
    first = linear_propagation(toy_model, v, "toy/category", cache=store, **opts)
    assert len(list(store.root.rglob("*.safetensors"))) == 1

    def same(a, b):
        return (torch.equal(a.W, b.W) and torch.equal(a.theta, b.theta)
                and all(getattr(a, k) == getattr(b, k) for k in lmod._STORED_SCALARS) and (a.task, a.layer) == (b.task, b.layer))

    assert same(first, fresh)
    real = lmod.SuffixStates
    monkeypatch.setattr(lmod, "SuffixStates", lambda *a, **k: pytest.fail("a hit ran the model"))
    hit = linear_propagation(toy_model, v, "toy/category", cache=store, **opts)
    assert same(hit, fresh)
    monkeypatch.setattr(lmod, "SuffixStates", real)
    calls = []
    monkeypatch.setattr(lmod, "SuffixStates", lambda *a, **k: calls.append(1) or real(*a, **k))
    other = _vector(toy_model, 2, v.values[0] * 1.5)
    for args, kw in [((v, "toy/category"), dict(opts, ridge=1e-2)), ((v, "toy/category"), dict(opts, seed=1)),
                     ((other, "toy/category"), opts), ((v, "toy/category"), dict(opts, n=10))]:
        n_before = len(calls)
        linear_propagation(toy_model, *args, cache=store, **kw)
        assert len(calls) > n_before, kw  # a miss: fitted afresh
    prompts = _prompts(n=12)
    n_before, n_files = len(calls), len(list(store.root.rglob("*.safetensors")))
    linear_propagation(toy_model, v, prompts=prompts, cache=store, n_copies=40, n_heldout=8)
    assert len(calls) > n_before and len(list(store.root.rglob("*.safetensors"))) == n_files  # not keyed
    key = store.key(lmod._fit_store(toy_model, v, tv.tasks.get("toy/category"), store,
                                    tv.make_splits(tv.tasks.get("toy/category"), seed=0),
                                    dict(n_copies=40, n_heldout=8, noise=1.0, ridge=1e-3, n_queries=16, n=12, seed=0,
                                         rows_per_pass=512))[1])
    path = store.path(key)
    assert path.exists()
    path.write_bytes(path.read_bytes()[:-40] + b"\0" * 40)  # corrupt: never trusted, fitted afresh and replaced
    n_before = len(calls)
    again = linear_propagation(toy_model, v, "toy/category", cache=store, **opts)
    assert len(calls) > n_before and same(again, fresh)
    assert same(linear_propagation(toy_model, v, "toy/category", cache=store, **opts), fresh)
