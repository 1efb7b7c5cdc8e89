"""tv.circuit: the joined per-head frame, the cache, the example attention patterns, a head's detail."""

from __future__ import annotations

import math

import pytest
import torch

import tvlens as tv
from tests.conftest import assert_no_hooks_left, make_tiny_model
from tvlens.errors import ConfigError

TASK = "toy/antonym"


@pytest.fixture(scope="module")
def gqa_model(toy_tokenizer):
    # grouped-query attention: 4 query heads share 2 key-value heads
    return make_tiny_model(toy_tokenizer, n_layers=3, d_model=32, n_heads=4, n_key_value_heads=2, seed=1)


def random_vector(model, layer: int, seed: int = 0, scale: float = 3.0) -> tv.TaskVector:
    g = torch.Generator().manual_seed(seed)
    values = scale * torch.randn(1, model.cfg.d_model, generator=g)
    return tv.TaskVector(values, (tv.Site(layer, -1),), task=TASK, d_model=model.cfg.d_model, n_layers=model.cfg.n_layers,
                         model_fingerprint=tv.fingerprint(model))


@pytest.fixture(params=["tiny", "gqa"])
def model(request, tiny_model, gqa_model):
    return {"tiny": tiny_model, "gqa": gqa_model}[request.param]


def test_heads_frame_joins_the_analyses(model):
    from tvlens.analysis import attention_sinks, head_saliency, ov_products

    v = random_vector(model, 1)
    c = tv.circuit(model, v, TASK, n=6, fraction=0.25)
    df = c.heads()
    cfg = model.cfg
    assert len(df) == cfg.n_layers * cfg.n_heads
    assert list(zip(df["layer"], df["head"])) == [(a, b) for a in range(cfg.n_layers) for b in range(cfg.n_heads)]
    before = df[df["layer"] < 1]  # heads before the vector do not read it
    assert before[["saliency", "rank", "exact_effect", "ov_norm", "ov_alignment"]].isna().all().all()
    after = df[df["layer"] >= 1]
    assert after[["saliency", "rank", "exact_effect", "ov_norm", "sink_mass"]].notna().all().all()
    # each column is the underlying analysis, asked for independently with the same prompts
    ps = c.prompts
    grad = head_saliency(model, v, prompts=ps, mode="grad")
    exact = head_saliency(model, v, prompts=ps, mode="exact")
    ov = ov_products(model, v, prompts=ps)
    sinks = attention_sinks(model, v, key_heads=grad.top(0.25), prompts=ps)
    grid = lambda col: torch.tensor(df[col].values, dtype=torch.float32).reshape(cfg.n_layers, cfg.n_heads)  # noqa: E731
    assert torch.allclose(grid("saliency")[1:], grad.scores[1:], rtol=1e-4, atol=1e-7)
    assert torch.allclose(grid("exact_effect")[1:], exact.scores[1:], rtol=1e-4, atol=1e-7)
    assert torch.allclose(grid("ov_norm")[1:], ov.ov_norm[1:], rtol=1e-4)
    assert torch.allclose(grid("sink_mass"), sinks.sink_mass, atol=1e-6)
    assert sorted(c.key_heads()) == sorted(grad.top(0.25))
    assert sorted(map(tuple, df.loc[df["key"], ["layer", "head"]].values.tolist())) == sorted(grad.top(0.25))
    assert sorted(after["rank"].astype(int)) == list(range(1, len(after) + 1))
    assert math.isclose(c.spearman(), tv.analysis.spearman(grad, exact), abs_tol=1e-9)
    assert_no_hooks_left(model)


def test_each_analysis_runs_once(tiny_model, monkeypatch):
    import tvlens.analysis.ablation as ablation
    import tvlens.analysis.ov as ov
    import tvlens.analysis.saliency as saliency
    import tvlens.analysis.sinks as sinks

    calls: dict[str, int] = {}

    def counting(module, name):
        real = getattr(module, name)

        def wrapper(*a, **k):
            key = name + (":" + k["mode"] if "mode" in k else "") + (":" + k["kind"] if "kind" in k else "")
            calls[key] = calls.get(key, 0) + 1
            return real(*a, **k)

        monkeypatch.setattr(module, name, wrapper)

    for module, name in [(saliency, "head_saliency"), (ov, "ov_products"), (ov, "ov_reconstruction"),
                         (sinks, "attention_sinks"), (ablation, "head_ablation")]:
        counting(module, name)
    c = tv.circuit(tiny_model, random_vector(tiny_model, 0), TASK, n=4, n_random=2)
    for _ in range(2):
        c.heads()
        c.key_heads()
        c.head(1, 1)
        c.spearman()
        c.ablate("zero")
        c.ablate("path")
        c.dashboard_data(kinds=("zero", "path"))
    assert calls == {"head_saliency:grad": 1, "head_saliency:exact": 1, "ov_products": 1, "ov_reconstruction": 1,
                     "attention_sinks": 1, "head_ablation:zero": 1, "head_ablation:path": 1}
    assert c.ablate("zero") is c.ablate("zero") and c.ablate("zero") is not c.ablate("path")
    assert c.ablate("zero").heads == tuple(c.key_heads())
    assert "computed:" in repr(c) and "saliency" in repr(c)


def test_example_patterns_are_the_steered_run(model):
    """Oracle: TransformerLens's own cache of the steered run; and θ at the last position leaves every
    earlier query row of every pattern as in the run without θ (causal attention)."""
    v = random_vector(model, 1, scale=20.0)
    c = tv.circuit(model, v, TASK, n=3, example=2)
    tokens, pats = c.example_patterns()
    text = c.prompts.texts[2]
    toks = model.to_tokens(text)
    assert len(tokens) == toks.shape[1] and pats.shape == (model.cfg.n_layers, model.cfg.n_heads, len(tokens), len(tokens))
    with tv.steer(model, v):
        _, cache = model.run_with_cache(toks)
    _, plain = model.run_with_cache(toks)
    for layer in range(model.cfg.n_layers):
        assert torch.allclose(pats[layer], cache[f"blocks.{layer}.attn.hook_pattern"][0], atol=1e-6)
        assert torch.allclose(pats[layer][:, :-1], plain[f"blocks.{layer}.attn.hook_pattern"][0][:, :-1], atol=1e-6)
    top = model.cfg.n_layers - 1  # a layer at or after the vector's (1): its last query row reads θ
    later = pats[top, :, -1] - plain[f"blocks.{top}.attn.hook_pattern"][0][:, -1]
    assert later.abs().max() > 1e-4  # θ does change what the last token attends to (the check is not vacuous)
    assert torch.allclose(pats.sum(-1), torch.ones(pats.shape[:-1]), atol=1e-5)
    assert_no_hooks_left(model)


def test_head_detail(gqa_model):
    v = random_vector(gqa_model, 1)
    c = tv.circuit(gqa_model, v, TASK, n=4)
    d = c.head(2, 3)
    _, pats = c.example_patterns()
    assert torch.equal(d.pattern, pats[2, 3])
    assert [t for t, _ in c.ov().decoded(2, 3, k=len(d.decoded))] == list(d.decoded)
    assert d.row["layer"] == 2 and d.row["head"] == 3 and d.row["saliency"] == c.heads().loc[2 * 4 + 3, "saliency"]
    assert list(d.to_frame().columns) == ["position", "token", "attention_from_last"]
    assert c.head(0, 1).decoded == ()  # before the vector's layer: no OV product
    assert "L2H3" in repr(d) and d.plot() is not None


@pytest.mark.parametrize("kw, match", [
    ({"fraction": 0.0}, "fraction"), ({"example": 99}, "example"), ({"n_random": 0}, "n_random"),
])
def test_bad_options_are_refused(tiny_model, kw, match):
    with pytest.raises(ConfigError, match=match):
        tv.circuit(tiny_model, random_vector(tiny_model, 0), TASK, n=4, **kw)


def test_bad_queries_are_refused(tiny_model):
    v = random_vector(tiny_model, 0)
    with pytest.raises(ConfigError, match="task"):
        tv.circuit(tiny_model, v)
    c = tv.circuit(tiny_model, v, TASK, n=4)
    with pytest.raises(ConfigError, match="outside"):
        c.head(5, 0)
    with pytest.raises(ConfigError, match="kind"):
        c.ablate("gaussian")


def test_toy_saliency_tracks_exact_ablation(toy_model, tmp_path):
    """Behaviour on the embedded model: one-pass saliency ranks heads like exact ablation (paper: >= 0.8),
    and the dashboard is written from the same cached results."""
    task = tv.tasks.get(TASK)
    res = tv.train_ltv(toy_model, task, layers=[2], splits=tv.make_splits(task, seed=0), config=tv.LTVConfig(seed=0),
                       progress=False)
    c = tv.circuit(toy_model, res.vector, task, fraction=0.25)
    assert c.spearman() >= 0.8
    assert len(c.key_heads()) == 3  # a quarter of the 12 heads of layers 2-4
    page = c.dashboard(tmp_path / "heads.html", kinds=("zero",))
    assert page.path.is_file() and "plotly_click" in page.html
    assert_no_hooks_left(toy_model)


@pytest.mark.real_model
def test_real_model_dashboard_data(smollm2):
    """SmolLM2 (RMSPre, rotary, 9 query heads on 3 key-value heads): the whole circuit, end to end."""
    model = smollm2
    g = torch.Generator().manual_seed(0)
    values = 100.0 * torch.nn.functional.normalize(torch.randn(1, model.cfg.d_model, generator=g), dim=-1)
    v = tv.TaskVector(values, (tv.Site(27, -1),), task="capitalize", d_model=model.cfg.d_model,
                      n_layers=model.cfg.n_layers, model_fingerprint=tv.fingerprint(model))
    c = tv.circuit(model, v, "capitalize", n=4, n_random=2)
    data = c.dashboard_data(kinds=("path",))
    n_tok = len(data.tokens)
    assert data.patterns.shape == (30, 9, n_tok, n_tok)
    assert torch.allclose(data.patterns.sum(-1), torch.ones(30, 9, n_tok), atol=1e-4)
    frame = data.heads
    assert len(frame) == 270 and frame.loc[frame.layer < 27, "saliency"].isna().all()
    assert frame.loc[frame.layer >= 27, ["saliency", "exact_effect", "ov_norm", "sink_mass"]].notna().all().all()
    assert frame["key"].sum() == 3 and math.isfinite(c.spearman())  # 10% of the 27 heads of layers 27-29
    assert len(data.decoded[27 * 9]) > 0 and data.decoded[0] == ()
    assert_no_hooks_left(model)
