"""The report's sections on heads (issue #10) and on the logit lens and linearity (issue #11).

Each builder calls the analyses by their contract names in :mod:`tvlens.analysis`; where one is
missing the section says so (see :func:`tvlens.viz.report._analysis`).
"""

from __future__ import annotations


def _key_heads(ctx, fraction: float = 0.1):
    return _saliency(ctx)[0].top(fraction)


def _ov(ctx):
    from tvlens.viz.report import _analysis

    ov_products, ov_reconstruction = _analysis("ov_products", "ov_reconstruction")
    return [ov_products(ctx.model, ctx.vector, prompts=ctx.prompts), ov_reconstruction(ctx.model, ctx.vector, prompts=ctx.prompts)]


def _saliency(ctx):
    from tvlens.viz.report import _analysis

    if "saliency" not in ctx.cache:
        (head_saliency,) = _analysis("head_saliency")
        ctx.cache["saliency"] = head_saliency(ctx.model, ctx.vector, prompts=ctx.prompts)
    return [ctx.cache["saliency"]]


def _ablation(ctx):
    from tvlens.viz.report import _analysis

    (head_ablation,) = _analysis("head_ablation")
    heads = _key_heads(ctx)
    return [head_ablation(ctx.model, ctx.vector, ctx.prompts, heads, kind=k, seed=ctx.seed) for k in ("zero", "mean", "path")]


def _sinks(ctx):
    from tvlens.viz.report import _analysis

    (attention_sinks,) = _analysis("attention_sinks")
    return [attention_sinks(ctx.model, ctx.vector, ctx.prompts, _key_heads(ctx), seed=ctx.seed)]


def _lens(ctx):
    from tvlens.viz.report import _analysis

    (logit_lens,) = _analysis("logit_lens")
    n_layers = ctx.model.cfg.n_layers
    early, late = max(n_layers // 4, 0), min(3 * n_layers // 4, n_layers - 1)
    vectors = {f"LTV at L{early} (L/4)": ctx.ltv_at(early), f"LTV at L{late} (3L/4)": ctx.ltv_at(late)}
    return [logit_lens(ctx.model, ctx.task, vectors=vectors, shots=(0, 8 if ctx.toy else 5), n=ctx.n or 200, seed=ctx.seed)]


def _decoded(ctx):
    from tvlens.viz.report import _analysis

    (decoded_tokens,) = _analysis("decoded_tokens")
    return [decoded_tokens(ctx.model, {f"L{layer}": v for layer, v in ctx.vectors_by_layer().items()}, k=10)]


def _linear(ctx):
    from tvlens.viz.report import _analysis

    (linear_propagation,) = _analysis("linear_propagation")
    return [linear_propagation(ctx.model, ctx.vector, ctx.task)]


def _rotation(ctx):
    from tvlens.viz.report import _analysis

    (rotation_vs_stretch,) = _analysis("rotation_vs_stretch")
    return [rotation_vs_stretch(ctx.model, ctx.vectors_by_layer(), ctx.task)]


def register(add) -> None:
    h, lens = "Heads", "Logit lens and linearity"
    add("ov", "Per-head OV products and OV reconstruction", h, _ov,
        "W_O W_V θ for every later head, and the accuracy of adding their sum instead of injecting θ.")
    add("saliency", "Key-head saliency", h, _saliency, "|a · dp(gold)/da| per head with θ injected, averaged over queries.")
    add("ablation", "Key-head ablation (zero, mean, path-patched)", h, _ablation,
        "Accuracy with the top 10% heads by saliency ablated, against random head sets of the same size.")
    add("sinks", "Attention sinks", h, _sinks, "Attention from the last position, key vs random heads.")
    add("lens", "Logit lens and task alignment", lens, _lens,
        "Per layer: logit-lens accuracy and task alignment for zero-shot, ICL and LTVs injected early and late (Figure 7A).")
    add("decoded", "Decoded tokens of the LTV per layer", lens, _decoded, "Top tokens of each layer's LTV through ln_final and W_U (Figure 7B).")
    add("linear", "Linear propagation", lens, _linear, "W_TV fitted so that injecting θ' shifts the final state by W_TV θ' (Figure 8A).")
    add("rotation", "Rotation vs stretch", lens, _rotation, "Polar decomposition of W_TV per layer (Figure 9).")
