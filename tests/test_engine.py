"""The engine's oracle: every suffix run equals the full forward with the same edits (within 1e-5).

Checked on the tiny architectures (LN, LNPre, RMS + GQA + rotary, and a shortformer model), left
and right padding, one- and several-column suffixes, for every edit kind: the final residual
stream, residuals at every layer, attention patterns, hook_z and gradients w.r.t. a leaf.
"""

from __future__ import annotations

import logging

import pytest
import torch

import tvlens as tv
from tests.conftest import TINY_ARCHS, assert_no_hooks_left, make_cached_tiny_model, make_tiny_model
from tvlens import _engine as engine
from tvlens._hooks import (AblateHeads, AddAt, AddPerRow, AddToHeads, Cache, PatchFrom, SetHeadPerRow, Span, intervene)

ARCHS = {**TINY_ARCHS, "shortformer": dict(n_layers=3, n_heads=2, positional_embedding_type="shortformer"),
         "gated_gqa": dict(TINY_ARCHS["gqa_rms"], gated_mlp=True, act_fn="silu")}  # SmolLM2's layout
TOL = 1e-5


@pytest.fixture(scope="module", params=list(ARCHS))
def model(request, toy_tokenizer, tmp_path_factory):
    return make_cached_tiny_model(toy_tokenizer, tmp_path_factory.mktemp("tiny"), seed=5, **ARCHS[request.param])


@pytest.fixture(scope="module")
def prompts():
    return tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=2, n=5)  # mixed lengths


def _names(model):
    L = model.cfg.n_layers
    return ([f"blocks.{lay}.hook_resid_pre" for lay in range(1, L)] + [f"blocks.{L - 1}.hook_resid_post"]
            + [f"blocks.{lay}.attn.hook_pattern" for lay in range(1, L)] + [f"blocks.{lay}.attn.hook_z" for lay in range(1, L)])


def full(model, batch, edits, names=(), replicas=1):
    """The reference: one full forward of the (replicated) batch with ``edits``, every column."""
    span = Span(batch.first_index.repeat(replicas), batch.last_index.repeat(replicas))
    store = Cache(tuple(names))
    with intervene(model, *edits, store, span=span):
        resid = engine.final_residual(model, batch.tokens.repeat(replicas, 1), batch.attention_mask.repeat(replicas, 1))
    return resid, (store.store.calls[-1] if names else {})


def assert_matches(out: engine.SuffixRun, ref_resid, ref_acts, c0: int, *, relative: bool = False) -> None:
    """Within TOL, absolute (tiny models) or relative to each tensor's largest entry (``relative``)."""
    assert out.c0 == c0

    def close(a, b, what):
        assert a.shape == b.shape, what
        scale = b.abs().max().item() if relative else 1.0
        assert (a - b).abs().max().item() < TOL * scale, what

    close(out.resid, ref_resid[:, c0:], "final residual")
    for name, act in out.acts.items():
        close(act, ref_acts[name][:, :, c0:] if name.endswith("hook_pattern") else ref_acts[name][:, c0:], name)


def cases(model, batch):
    """(label, edits, positions the prefix is built for, start layer, replicas)."""
    cfg, n = model.cfg, len(batch)
    g = torch.Generator().manual_seed(0)
    d = cfg.d_model
    theta = 3 * torch.randn(2, d, generator=g)
    means = {1: torch.randn(cfg.n_heads, cfg.d_head, generator=g), 2: torch.randn(cfg.n_heads, cfg.d_head, generator=g)}
    heads = torch.tensor([(1, 0), (2, 1), (1, 1)]).repeat_interleave(n, 0)  # replica r patches its own head
    src_span = Span(batch.first_index, batch.last_index)
    src = Cache(("blocks.2.attn.hook_z",))
    with torch.no_grad(), intervene(model, AddAt((tv.Site(0, -1),), theta[:1]), src, span=src_span):
        model(batch.tokens, attention_mask=batch.attention_mask)  # the patch source: another run
    return [
        ("add", [AddAt((tv.Site(1, -1),), theta[:1])], (-1,), 1, 1),
        ("replace", [AddAt((tv.Site(1, -1),), theta[:1], operation="replace")], (-1,), 1, 1),
        ("add two columns", [AddAt((tv.Site(1, -1), tv.Site(2, -3)), theta)], (-3, -1), 1, 1),
        ("add at BOS (full width)", [AddAt((tv.Site(1, 0),), theta[:1])], (0,), 1, 1),
        ("per-row add", [AddPerRow(tv.Site(2, -2), torch.randn(n, d, generator=g))], (-2,), 2, 1),
        ("zero head", [AblateHeads(((1, 0),), positions=(-1,))], (-1,), 1, 1),
        ("mean heads, two columns", [AblateHeads(((1, 1), (2, 0)), "mean", means, positions=(-2, -1))], (-2,), 1, 1),
        ("one head per replica", [SetHeadPerRow(heads, torch.randn(3 * n, cfg.d_head, generator=g))], (-1,), 1, 3),
        ("patch from another run", [PatchFrom(src.store, ("blocks.2.attn.hook_z",), (-1,), (0,))], (-1,), 2, 1),
        ("add and zero head", [AddAt((tv.Site(1, -1),), theta[:1]), AblateHeads(((2, 1),), positions=(-1,))], (-1,), 1, 1),
    ]


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "blocks"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_every_suffix_run_equals_the_full_forward(model, prompts, padding, lean, caplog):
    batch = prompts.tokenize(model, padding_side=padding)
    names = _names(model)
    caplog.set_level(logging.INFO, logger="tvlens._engine")
    with torch.no_grad():
        clean, _ = full(model, batch, [])
        for label, edits, positions, start, replicas in cases(model, batch):
            pre = engine.prefix(model, batch, positions=positions, layer=start, lean=lean)
            assert pre.fallback is None
            covered = pre.lean and model.cfg.positional_embedding_type != "shortformer"  # the lean blocks' coverage (HookedTransformer only)
            assert (pre.lean_stack(names, start) is not None) == covered
            if positions == (-1,) and padding == "left":
                assert pre.width == 1, label  # left padding: one column
            out = engine.run(pre, edits, start=start, replicas=replicas, names=names)
            ref, acts = full(model, batch, edits, names, replicas)
            assert_matches(out, ref, acts, pre.c0)
            assert (ref - clean.repeat(replicas, 1, 1)).abs().max() > 1e-3, label  # the edit does something
            assert_no_hooks_left(model)
    assert "full forward" not in caplog.text  # every run above took the suffix


def test_a_zero_edit_changes_nothing_and_the_base_run_is_the_clean_one(model, prompts):
    batch = prompts.tokenize(model)
    with torch.no_grad():
        pre = engine.prefix(model, batch, layer=1)
        clean, _ = full(model, batch, [])
        assert (pre.final() - clean[torch.arange(len(batch)), batch.last_index]).abs().max() < TOL
        zero = engine.run(pre, [AddAt((tv.Site(1, -1),), torch.zeros(1, model.cfg.d_model))])
        assert torch.equal(zero.resid, engine.run(pre).resid)
        assert (zero.last() - pre.final()).abs().max() < TOL
    assert_no_hooks_left(model)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_base_edits_are_in_the_prefix_and_runs_resume_at_any_later_layer(model, prompts, padding):
    batch = prompts.tokenize(model, padding_side=padding)
    theta = 3 * torch.randn(2, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    steer = AddAt((tv.Site(1, -1), tv.Site(2, -1)), theta)  # a site at a layer a run resumes at, too
    names = _names(model)
    with torch.no_grad():
        pre = engine.prefix(model, batch, base=[steer], layer=1)
        steered, _ = full(model, batch, [steer])
        assert (pre.final() - steered[torch.arange(len(batch)), batch.last_index]).abs().max() < TOL
        for start in (1, 2):
            ablate = AblateHeads(((start, 1),), positions=(-1,))
            out = engine.run(pre, [ablate], start=start, names=names)
            ref, acts = full(model, batch, [steer, ablate], names)
            assert_matches(out, ref, acts, pre.c0)
    assert_no_hooks_left(model)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "blocks"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_gradients_wrt_a_leaf_equal_the_full_forwards(model, prompts, padding, lean):
    batch = prompts.tokenize(model, padding_side=padding)
    cfg, n = model.cfg, len(batch)
    rows = torch.arange(n)
    pre = engine.prefix(model, batch, layer=1, lean=lean)

    def grads(run_suffix: bool):
        theta = torch.zeros(1, cfg.d_model, requires_grad=True)
        delta = torch.zeros(n, 2, cfg.n_heads, cfg.d_head, requires_grad=True)
        edits = [AddAt((tv.Site(1, -1),), theta), AddToHeads((1, 2), delta)]
        if run_suffix:
            last = engine.run(pre, edits).last()
        else:
            resid, _ = full(model, batch, edits)
            last = resid[rows, batch.last_index]
        p = engine.p_gold(engine.final_logits(model, last), batch.answer_ids)
        return torch.autograd.grad(p.sum(), [theta, delta])

    for a, b in zip(grads(True), grads(False)):
        assert b.abs().max() > 0  # not vacuous
        assert (a - b).abs().max().item() < TOL
    assert_no_hooks_left(model)


def test_an_edit_before_the_prefix_end_falls_back_to_a_full_forward_and_says_so(model, prompts, caplog):
    batch = prompts.tokenize(model)
    early = AddAt((tv.Site(1, -3),), torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(2)))
    below = AblateHeads(((0, 0),), positions=(-1,))
    with torch.no_grad():
        pre = engine.prefix(model, batch, layer=1)
        for edits, start in (([early], 1), ([below], 1)):
            with caplog.at_level(logging.INFO, logger="tvlens._engine"):
                caplog.clear()
                out = engine.run(pre, edits, start=start)
            assert "full forward" in caplog.text
            ref, _ = full(model, batch, edits)
            assert_matches(out, ref, {}, pre.c0)
    assert_no_hooks_left(model)


def test_sub_batches_under_a_budget_equal_one_run(model, prompts):
    batch = prompts.tokenize(model)
    with torch.no_grad():
        pre = engine.prefix(model, batch, layer=1)
        edits = [AblateHeads(((1, 0),), positions=(-1,))]
        small = engine.Budget(max_bytes=1)
        assert engine.rows_per_pass(pre, budget=small) == 1
        split = engine.run_rows(pre, edits, budget=small)
        whole = engine.run(pre, edits).last()
        assert (split - whole).abs().max() < TOL
    assert engine.rows_per_pass(pre, budget=engine.Budget(max_bytes=2**40, max_rows=7)) == 7


def test_an_exception_inside_a_run_leaves_no_hook(model, prompts):
    batch = prompts.tokenize(model)
    pre = engine.prefix(model, batch)
    bad = AddPerRow(tv.Site(1, -1), torch.zeros(len(batch) + 1, model.cfg.d_model))  # wrong row count
    with pytest.raises(tv.errors.ConfigError), torch.no_grad():
        engine.run(pre, [bad], start=1)
    assert_no_hooks_left(model)


# --- the clients equal the full-width references they replaced ---------------------------------


@pytest.mark.parametrize("padding", ["left", "right"])
def test_aie_and_exact_saliency_equal_their_full_width_references(model, prompts, padding):
    from tvlens._reference import aie_full_width, exact_drops_full_width
    from tvlens.analysis.saliency import exact_drops
    from tvlens._reference import aie_loop
    from tvlens.baselines.function_vector import aie_batched

    cfg = model.cfg
    batch = prompts.tokenize(model, padding_side=padding)
    g = torch.Generator().manual_seed(3)
    mean_z = 3 * torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head, generator=g)
    heads = [(lay, h) for lay in range(cfg.n_layers) for h in range(cfg.n_heads)]
    fast = aie_batched(model, batch, mean_z, heads, heads_per_pass=3)
    loop = aie_loop(model, batch, mean_z, heads)  # one full forward per head
    assert loop.abs().max() > 1e-4 and (fast - loop).abs().max() < TOL
    # TransformerLens's start_at_layer drops shortformer positions: the old full-width path is exact elsewhere only
    shortformer = cfg.positional_embedding_type == "shortformer"
    if not shortformer:
        assert (aie_full_width(model, batch, mean_z, heads, heads_per_pass=3) - fast).abs().max() < TOL
    theta = 3 * torch.randn(2, cfg.d_model, generator=g)
    v = tv.TaskVector(theta, (tv.Site(1, -1), tv.Site(2, -2)), task="toy/antonym", model_fingerprint=tv.fingerprint(model))
    later = [hd for hd in heads if hd[0] >= 1]
    d1, p1 = exact_drops(model, v, batch, later)
    assert d1.abs().max() > 1e-4
    if not shortformer:
        d2, p2 = exact_drops_full_width(model, v, batch, later, heads_per_pass=2)
        assert (d1 - d2).abs().max() < TOL and (p1 - p2).abs().max() < TOL
    else:  # against full forwards, head by head
        rows = torch.arange(len(batch))
        for j, (lay, h) in enumerate(later[:3]):
            edits = [AddAt(v.sites, v.values), AblateHeads(((lay, h),), positions=(-1,))]
            resid, _ = full(model, batch, edits)
            p = engine.p_gold(engine.final_logits(model, resid[rows, batch.last_index]), batch.answer_ids)
            assert (d1[:, j] - (p1 - p)).abs().max() < TOL
    assert_no_hooks_left(model)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_one_pass_gradient_saliency_equals_its_full_forward_reference(model, prompts, padding):
    from tvlens._reference import grad_attribution_full_width
    from tvlens.analysis.saliency import grad_attribution

    cfg = model.cfg
    batch = prompts.tokenize(model, padding_side=padding)
    theta = 3 * torch.randn(2, cfg.d_model, generator=torch.Generator().manual_seed(8))
    v = tv.TaskVector(theta, (tv.Site(1, -1), tv.Site(2, -2)), task="toy/antonym", model_fingerprint=tv.fingerprint(model))
    for layers in ([1, 2], [0, 2]):  # from the injection layer; from below it (the prefix starts lower)
        a1, p1 = grad_attribution(model, v, batch, layers, batch_size=2)
        a2, p2 = grad_attribution_full_width(model, v, batch, layers, batch_size=3)
        assert a2.abs().max() > 1e-4  # not vacuous
        assert (a1 - a2).abs().max() < TOL and (p1 - p2).abs().max() < TOL
    assert_no_hooks_left(model)


def test_full_width_reads_equal_a_cached_forward(model, prompts):
    batch = prompts.tokenize(model, padding_side="right")
    steer = AddAt((tv.Site(1, -1),), torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(9)))
    names = ["blocks.1.hook_resid_pre", "blocks.2.attn.hook_z", "blocks.2.attn.hook_pattern"]
    cols = torch.stack([batch.first_index, batch.last_index - 1], 1)  # [batch, 2]: two columns a row
    last, acts = engine.forward(model, batch, [steer], names=names[:2], at=cols, whole=names[2:], batch_size=2)
    ref, ref_acts = full(model, batch, [steer], names)
    rows = torch.arange(len(batch))
    close = lambda a, b: a.shape == b.shape and (a - b).abs().max() < TOL  # noqa: E731 (sub-batches of 2 vs one of 5)
    assert close(last, ref[rows, batch.last_index])
    for n in names[:2]:
        assert close(acts[n], ref_acts[n][rows[:, None], cols])
    assert close(acts[names[2]], ref_acts[names[2]])
    with pytest.raises(tv.errors.ConfigError):
        engine.forward(model, batch, names=names[:1], whole=names[:1])
    assert_no_hooks_left(model)


@pytest.mark.parametrize("kind", ["zero", "mean", "path"])
def test_ablation_conditions_equal_their_full_width_reference(model, prompts, kind):
    from tvlens._reference import measure_conditions_full_width
    from tvlens.analysis.ablation import measure_conditions

    if model.cfg.positional_embedding_type == "shortformer":
        pytest.skip("the reference resumes through start_at_layer, which drops shortformer positions")
    batch = prompts.tokenize(model)
    theta = 3 * torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(4))
    v = tv.TaskVector(theta, (tv.Site(1, -1),), task="toy/antonym", model_fingerprint=tv.fingerprint(model))
    sets = [((1, 0), (2, 1)), ((2, 0),), ()]
    for positions in ((-1,), (-2, -1)):
        new = measure_conditions(model, v, batch, sets, kind, positions=positions, batch_size=2)
        ref = measure_conditions_full_width(model, v, batch, sets, kind, positions=positions, batch_size=2)
        flat = lambda r: [r[0], r[1], *r[2]]  # noqa: E731
        for (a, p), (ra, rp) in zip(flat(new), flat(ref)):
            assert a == ra and abs(p - rp) < TOL
        assert max(abs(p - new[1][1]) for _, p in new[2]) > 1e-6  # ablating moves p(gold)
    assert_no_hooks_left(model)


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.parametrize("padding", ["left", "right"])
def test_suffix_runs_equal_the_full_forward_on_smollm2(smollm2, padding):
    """The oracle on the real model (GQA, rotary, RMS, 30 layers): 2-shot prompts of the antonym task.

    Tolerances are relative: SmolLM2's residual stream reaches entries of ~1e2, where float32's
    different summation orders (a 2-column suffix vs a 25-column forward) differ by ~1e-4 absolute."""
    model, cfg = smollm2, smollm2.cfg
    batch = tv.make_prompts(tv.make_splits(tv.tasks.get("antonym")), "test", k=2, n=4).tokenize(model, padding_side=padding)
    n = len(batch)
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(2, cfg.d_model, generator=g)
    heads = torch.tensor([(15, 0), (20, 3)]).repeat_interleave(n, 0)
    names = [f"blocks.{lay}.hook_resid_pre" for lay in (16, 29)] + ["blocks.20.attn.hook_pattern", "blocks.20.attn.hook_z"]
    cases = [([AddAt((tv.Site(15, -1), tv.Site(18, -2)), theta)], (-2, -1), 1),
             ([SetHeadPerRow(heads, torch.randn(2 * n, cfg.d_head, generator=g))], (-1,), 2)]
    with torch.no_grad():
        for edits, positions, replicas in cases:
            pre = engine.prefix(model, batch, positions=positions, layer=15)
            assert (pre.lean_stack(names, 15) is not None) == pre.lean  # the shared-prefix blocks cover SmolLM2 (hooked)
            out = engine.run(pre, edits, start=15, replicas=replicas, names=names)
            ref, acts = full(model, batch, edits, names, replicas)
            # float32 on residuals of norm ~1e2-1e3: the two orders of summation agree to ~1e-6 of the largest entry
            assert_matches(out, ref, acts, pre.c0, relative=True)
            logits = engine.final_logits(model, out.last())
            ref_logits = engine.final_logits(model, ref[torch.arange(n * replicas), batch.last_index.repeat(replicas)])
            assert (logits - ref_logits).abs().max() < 1e-3
            assert torch.equal(logits.argmax(-1), ref_logits.argmax(-1))
    assert_no_hooks_left(model)


def test_a_model_the_cache_cannot_serve_runs_full_forwards_and_says_so(toy_tokenizer, prompts, caplog):
    ungrouped = make_tiny_model(toy_tokenizer, seed=6, **TINY_ARCHS["gqa_rms"], ungroup_grouped_query_attention=True)
    batch = prompts.tokenize(ungrouped)
    steer = AddAt((tv.Site(1, -1),), torch.randn(1, ungrouped.cfg.d_model, generator=torch.Generator().manual_seed(7)))
    ablate = AblateHeads(((2, 1),), positions=(-1,))
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="tvlens._engine"):
        pre = engine.prefix(ungrouped, batch, base=[steer], layer=1)
        assert pre.fallback and "ungroup_grouped_query_attention" in caplog.text
        out = engine.run(pre, [ablate], start=2)
        ref, _ = full(ungrouped, batch, [steer, ablate])
        assert_matches(out, ref, {}, 0)
        steered, _ = full(ungrouped, batch, [steer])
        assert (pre.final() - steered[torch.arange(len(batch)), batch.last_index]).abs().max() < TOL
    assert_no_hooks_left(ungrouped)


@pytest.mark.parametrize("layout", [dict(attn_only=True, normalization_type=None),
                                    dict(parallel_attn_mlp=True, positional_embedding_type="rotary", rotary_dim=8)],
                         ids=["attn_only", "parallel_attn_mlp"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_the_lean_blocks_cover_attention_only_and_parallel_blocks(toy_tokenizer, prompts, layout, padding):
    from tvlens import _backend

    if not _backend.HAS_HOOKED:
        pytest.skip("the lean blocks are built from HookedTransformer's components (TransformerLens 3.x)")
    model = make_tiny_model(toy_tokenizer, seed=8, n_layers=3, n_heads=2, **layout)
    batch = prompts.tokenize(model, padding_side=padding)
    names = _names(model)
    with torch.no_grad():
        for label, edits, positions, start, replicas in cases(model, batch):
            pre = engine.prefix(model, batch, positions=positions, layer=start)
            assert pre.lean_stack(names, start) is not None, label
            out = engine.run(pre, edits, start=start, replicas=replicas, names=names)
            ref, acts = full(model, batch, edits, names, replicas)
            assert_matches(out, ref, acts, pre.c0)
    assert_no_hooks_left(model)
