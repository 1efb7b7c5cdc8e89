"""The paper's claims, one declaration each: what it says, where, how tvlens measures it, and the rule.

Context:
    A :class:`Claim`'s ``measure(cc)`` reads tvlens analyses (through the registry, the sweep and
    the comparison, each run once per :class:`~tvlens._claims._context.ClaimsContext`) and returns a
    :class:`Measurement`: the numbers the verdict reads (``numbers``), the headline value and its
    95% interval, the tasks and layers used. ``judge(numbers)`` turns the numbers into a verdict
    against :data:`~tvlens._claims._verdict.THRESHOLDS`; it never sees the model.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from tvlens._claims._verdict import (FAILS, HOLDS, THRESHOLDS, UNTESTABLE, Verdict, at_least, at_most, diff_interval,
                                    fisher_interval, share_interval)

__all__ = ["CLAIMS", "Claim", "Measurement"]


@dataclass(frozen=True)
class Measurement:
    numbers: dict  # what judge() reads
    value: float | None  # the headline number
    interval: tuple[float, float] | None  # its 95% interval (None where no sampling interval applies)
    tasks: tuple[str, ...]
    layers: tuple[int, ...]
    detail: str = ""  # the numbers behind the value, in words


@dataclass(frozen=True)
class Claim:
    key: str
    claim: str  # the paper's claim, in a line
    paper: str  # figure or table, the paper's model and number
    analysis: str  # the tvlens command that shows the underlying numbers ({model}, {task}, {layer}, {tasks})
    measure: Callable  # measure(cc) -> Measurement
    judge: Callable[[dict], tuple[Verdict, str]]
    extra: dict = field(default_factory=dict)


CLAIMS: dict[str, Claim] = {}


def _claim(key, claim, paper, analysis, judge):
    def wrap(measure):
        CLAIMS[key] = Claim(key, claim, paper, analysis, measure, judge)
        return measure
    return wrap


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


# --- baselines: Figure 2 and Table 1 -----------------------------------------------------------


def _best_baseline(res, layer_index: int) -> tuple[str, int] | None:
    """The better of Vanilla TV and FV at a layer: (method, correct); None when neither is defined."""
    best = None
    for m in ("vanilla_tv", "fv"):
        if m in res.methods:
            c = int(res.correct[res.methods.index(m), layer_index])
            if c >= 0 and (best is None or c > best[1]):
                best = (m, c)
    return best


CEILING = 0.99  # a layer or scenario where the LTV and the better baseline are both at or above this cannot tell them apart


@_claim("ltv_beats_baselines", "LTV beats Vanilla TV and FV at every layer",
        "Fig. 2, 11-14 (Llama2-7B ... Qwen2.5-32B): LTV above both at every injection layer",
        "tvlens sweep --model {model} --task {task} --json",
        lambda x: at_least(x["worst_gap"], THRESHOLDS["ltv_margin"], "LTV minus the better baseline at the worst layer: {value:+.2f}",
                           strict=True))
def _ltv_beats(cc) -> Measurement:
    worst = None  # (gap, task, layer, c_ltv, c_base, n)
    ceiling = 0
    for task in cc.tasks:
        res = cc.sweep(task)
        i = res.methods.index("ltv")
        for j, layer in enumerate(res.layers):
            best = _best_baseline(res, j)
            if best is None:
                continue
            c = int(res.correct[i, j])
            if min(c, best[1]) >= CEILING * res.n_test:
                ceiling += 1
                continue
            gap = (c - best[1]) / res.n_test
            if worst is None or gap < worst[0]:
                worst = (gap, task.name, layer, c, best[1], res.n_test, best[0])
    skipped = f"; {ceiling} (task, layer) cells with both at >= {CEILING} left out" if ceiling else ""
    if worst is None:
        return Measurement({"worst_gap": None}, None, None, tuple(t.name for t in cc.tasks), tuple(cc.layers()), skipped[2:])
    gap, task, layer, c, b, n, method = worst
    return Measurement({"worst_gap": gap}, gap, diff_interval(c, n, b, n), tuple(t.name for t in cc.tasks), tuple(cc.layers()),
                       f"worst: {task} layer {layer}, LTV {c / n:.2f} vs {method} {b / n:.2f} (n={n}){skipped}")


@_claim("ltv_matches_icl", "LTV matches or beats ICL at middle layers",
        "Fig. 2 (Llama3.1-8B): LTV at middle layers at or above ICL accuracy",
        "tvlens sweep --model {model} --task {task} --json",
        lambda x: at_least(x["worst_task_gap"], THRESHOLDS["icl_margin"],
                           "best middle-layer LTV minus ICL, worst task: {value:+.2f}"))
def _ltv_icl(cc) -> Measurement:
    lo, hi = cc.n_layers / 4, 3 * cc.n_layers / 4
    middle = [layer for layer in cc.layers() if lo <= layer <= hi]
    worst = None
    for task in cc.tasks:
        res = cc.sweep(task)
        i = res.methods.index("ltv")
        j = max((res.layers.index(layer) for layer in middle), key=lambda j: int(res.correct[i, j]))
        c = int(res.correct[i, j])
        gap = (c - res.icl_correct) / res.n_test
        if worst is None or gap < worst[0]:
            worst = (gap, task.name, res.layers[j], c, res.icl_correct, res.n_test, res.icl_shots)
    gap, task, layer, c, icl, n, shots = worst
    return Measurement({"worst_task_gap": gap}, gap, diff_interval(c, n, icl, n), tuple(t.name for t in cc.tasks), tuple(middle),
                       f"worst: {task}, LTV {c / n:.2f} at layer {layer} vs {shots}-shot ICL {icl / n:.2f} (n={n})")


@_claim("ltv_every_scenario", "LTV beats Vanilla TV and FV at any positions and layers, and alongside ICL prompts",
        "Table 1 (Llama3.1-8B, 7-task average): LTV first in all six scenarios",
        "tvlens compare --model {model} --tasks {tasks} --json",
        lambda x: at_least(x["worst_gap"], THRESHOLDS["ltv_margin"],
                           "LTV minus the better baseline (task average), worst scenario: {value:+.2f}", strict=True))
def _ltv_scenarios(cc) -> Measurement:
    res = cc.compare()
    worst, ceiling = None, []
    for s in res.scenarios:
        base = [res.accuracy(m, s) for m in ("vanilla_tv", "fv") if m in res.methods]
        base = [b for b in base if not _nan(b)]
        if not base:
            continue
        if min(res.accuracy("ltv", s), max(base)) >= CEILING:
            ceiling.append(s)
            continue
        gap = res.accuracy("ltv", s) - max(base)
        if worst is None or gap < worst[0]:
            worst = (gap, s)
    skipped = f"; left out (both at >= {CEILING}): {', '.join(ceiling)}" if ceiling else ""
    if worst is None:
        return Measurement({"worst_gap": None}, None, None, res.tasks, (), skipped[2:])
    gap, s = worst
    # the mean over tasks of each task's Newcombe bounds (conservative, like compare's intervals)
    bounds = []
    for k, t in enumerate(res.tasks):
        n = int(res.n_test[k])
        i, j = res.methods.index("ltv"), res.scenarios.index(s)
        cb = [int(res.correct[res.methods.index(m), j, k]) for m in ("vanilla_tv", "fv") if m in res.methods]
        cb = [c for c in cb if c >= 0]
        if cb:
            bounds.append(diff_interval(int(res.correct[i, j, k]), n, max(cb), n))
    interval = (statistics.mean(b[0] for b in bounds), statistics.mean(b[1] for b in bounds)) if bounds else None
    return Measurement({"worst_gap": gap}, gap, interval, res.tasks, (),
                       f"worst scenario: {s} (LTV {res.accuracy('ltv', s):.2f}){skipped}")


# --- heads: Figures 5 and 6 --------------------------------------------------------------------


@_claim("key_head_ablation", "Ablating the key heads costs far more accuracy than ablating random heads",
        "Fig. 5 right (Llama3.1-8B): 83 -> 51 with key heads ablated vs 78 with random heads",
        "tvlens analyze ablation --model {model} --task {task} --layer {layer} --json",
        lambda x: at_least(x["margin"], THRESHOLDS["ablation_margin"],
                           "random-set minus key-set accuracy (mean ablation): {value:+.2f}"))
def _ablation(cc) -> Measurement:
    results = {r.kind: r for r in cc.analysis("ablation")}
    r = results.get("mean") or next(iter(results.values()))
    margin = r.random_mean - r.key
    n = r.n
    interval = diff_interval(round(r.random_mean * n), n, round(r.key * n), n)
    others = ", ".join(f"{k}: key {v.key:.2f} vs random {v.random_mean:.2f}" for k, v in results.items())
    return Measurement({"margin": margin}, margin, interval, (r.task,), (r.layer,),
                       f"{r.kind} ablation of {len(r.heads)} heads: none {r.none:.2f}, key {r.key:.2f}, random {r.random_mean:.2f} "
                       f"(n={n}); {others}")


@_claim("one_pass_saliency", "One-pass gradient saliency ranks heads like exact ablation",
        "Sec. 4 (Llama3.1-8B): first-order saliency used in place of per-head ablation",
        "tvlens analyze saliency --model {model} --task {task} --layer {layer} --mode exact --json",
        lambda x: at_least(x["rho"], THRESHOLDS["saliency_rho"], "Spearman rho of grad vs exact saliency: {value:.2f}"))
def _saliency(cc) -> Measurement:
    from tvlens.analysis import head_saliency, spearman

    ctx = cc.analysis_context()
    grad = cc.analysis("saliency")[0]
    exact = cc.once("exact_saliency", lambda: head_saliency(cc.model, ctx.vector, prompts=ctx.prompts, mode="exact", progress=False))
    rho = spearman(grad, exact)
    heads = int((grad.scores.isfinite() & exact.scores.isfinite()).sum())
    return Measurement({"rho": rho}, rho, fisher_interval(rho, heads), (grad.task,), (grad.layer,), f"{heads} heads, n={grad.n}")


@_claim("ov_reconstruction", "Adding the heads' OV products of θ recovers a large share of the LTV's effect",
        "Fig. 5 left (Llama3.1-8B, 7-task average): 52 vs LTV 83",
        "tvlens analyze ov --model {model} --task {task} --layer {layer} --json",
        lambda x: (UNTESTABLE, f"the LTV gains only {x['gain']:+.2f} over zero-shot: no effect to recover")
        if x["gain"] is not None and x["gain"] < 0.05 else
        at_least(x["share"], THRESHOLDS["ov_share"], "share of the LTV's gain over zero-shot recovered: {value:.2f}"))
def _ov(cc) -> Measurement:
    from tvlens.stats import wilson_interval

    rec = [r for r in cc.analysis("ov") if hasattr(r, "variant_a")][0]
    variants = {"A": rec.variant_a, "B": rec.variant_b, "A weighted": rec.variant_a_weighted, "B weighted": rec.variant_b_weighted}
    name, best = max(variants.items(), key=lambda kv: kv[1])
    gain = rec.ltv - rec.zero_shot
    share = (best - rec.zero_shot) / gain if gain > 0 else None
    interval = None
    if share is not None:
        lo, hi = wilson_interval(round(best * rec.n), rec.n)
        interval = ((lo - rec.zero_shot) / gain, (hi - rec.zero_shot) / gain)
    return Measurement({"share": share, "gain": gain}, share, interval, (rec.task,), (rec.layer,),
                       f"best variant {name} {best:.2f}, LTV {rec.ltv:.2f}, zero-shot {rec.zero_shot:.2f} (n={rec.n})")


def _judge_sinks(x) -> tuple[Verdict, str]:
    if _nan(x["sink_margin"]) or _nan(x["final_margin"]):
        return UNTESTABLE, "no value could be measured"
    ok = x["sink_margin"] > THRESHOLDS["sink_margin"] and x["final_margin"] > 0
    return (HOLDS if ok else FAILS), (f"random minus key heads' attention to the first token {x['sink_margin']:+.3f} (threshold > "
                                      f"{THRESHOLDS['sink_margin']:.2f}); key minus random attention to θ's position "
                                      f"{x['final_margin']:+.3f} (threshold > 0)")


@_claim("key_heads_sink_less", "Key heads sink less and attend more to θ's position than random heads",
        "Fig. 6B (Llama3.1-8B)", "tvlens analyze sinks --model {model} --task {task} --layer {layer} --json", _judge_sinks)
def _sinks(cc) -> Measurement:
    r = cc.analysis("sinks")[0]

    def mean(mass, heads):
        return float(sum(float(mass[lay, h]) for lay, h in heads) / len(heads))

    rand = [hd for s in r.random_heads for hd in s]
    sink_margin = mean(r.sink_mass, rand) - mean(r.sink_mass, r.key_heads)
    final_margin = mean(r.final_mass, r.key_heads) - mean(r.final_mass, rand)
    return Measurement({"sink_margin": sink_margin, "final_margin": final_margin}, sink_margin, None, (r.task,), (r.layer,),
                       f"{len(r.key_heads)} key heads vs {len(r.random_heads)} random sets, n={r.n}")


def _judge_location(x) -> tuple[Verdict, str]:
    if x["span"] < THRESHOLDS["location_min_layers"]:
        return UNTESTABLE, (f"only {x['span']} layers from the injection layer to the last: the two windows overlap "
                            f"(needs {THRESHOLDS['location_min_layers']:.0f})")
    return at_least(x["ratio"], THRESHOLDS["location_ratio"], "key heads' share in the two windows over the chance share: {value:.2f}")


@_claim("key_heads_location", "Key heads cluster right after the injection layer and, second, in the last layers",
        "Fig. 6A (Llama3.1-8B, θ at 16)", "tvlens analyze saliency --model {model} --task {task} --layer {layer} --json",
        _judge_location)
def _location(cc) -> Measurement:
    ctx = cc.analysis_context()
    sal = cc.analysis("saliency")[0]
    first, last = sal.layer, cc.n_layers - 1
    span = last - first + 1
    width = max(1, span // 4)
    window = set(range(first, first + width)) | set(range(last - width + 1, last + 1))
    key = ctx.key_heads()
    scored = [(lay, h) for lay in range(sal.scores.shape[0]) for h in range(sal.scores.shape[1]) if math.isfinite(float(sal.scores[lay, h]))]
    inside = sum(1 for lay, _ in key if lay in window)
    chance = sum(1 for lay, _ in scored if lay in window) / len(scored)
    ratio = (inside / len(key)) / chance if key and chance > 0 else None
    return Measurement({"ratio": ratio, "span": span}, ratio, None, (sal.task,), tuple(sorted(window)),
                       f"{inside} of {len(key)} key heads in layers {sorted(window)} (chance share {chance:.2f})")


# --- logit lens and linearity: Figures 7-9 -----------------------------------------------------


@_claim("decoded_early_late", "Early-layer θ decodes to noise, late-layer θ to task tokens",
        "Fig. 7B (Llama3.1-8B, L/4 vs 3L/4)", "tvlens analyze decoded --model {model} --task {task} --json",
        lambda x: at_least(x["margin"], THRESHOLDS["decoded_margin"],
                           "late minus early θ's share of task tokens among its top tokens: {value:+.2f}", strict=True))
def _decoded(cc) -> Measurement:
    from tvlens.analysis import answer_token_ids, decoded_tokens, lens_layers

    ctx = cc.analysis_context()
    early, late = lens_layers(cc.n_layers)[0], lens_layers(cc.n_layers)[-1]
    dec = decoded_tokens(cc.model, {f"L{early}": ctx.ltv_at(early), f"L{late}": ctx.ltv_at(late)}, k=10)
    task_ids = set(answer_token_ids(cc.model, ctx.prompts).tolist())
    hits = [sum(1 for t in row.tolist() if t in task_ids) for row in dec.token_ids]
    k = dec.token_ids.shape[1]
    margin = (hits[-1] - hits[0]) / k
    return Measurement({"margin": margin}, margin, diff_interval(hits[-1], k, hits[0], k), (ctx.task.name,), (early, late),
                       f"task tokens in the top {k}: L{early} {hits[0]}, L{late} {hits[-1]}")


@_claim("linear_reconstruction", "A linear model of θ's effect (W θ at the final state) is within 10 points at most layers",
        "Fig. 8A (Llama3.1-8B)", "tvlens analyze rotation --model {model} --task {task} --json",
        lambda x: at_least(x["share"], THRESHOLDS["linear_share"], "share of layers within 10 points: {value:.2f}", strict=True))
def _linear(cc) -> Measurement:
    rows = cc.rotation().rows
    within = [r for r in rows if abs(r["injected_acc"] - r["reconstructed_acc"]) <= THRESHOLDS["linear_points"]]
    share = len(within) / len(rows)
    return Measurement({"share": share}, share, share_interval(len(within), len(rows)), (cc.task.name,),
                       tuple(r["layer"] for r in rows), f"{len(within)} of {len(rows)} layers within "
                       f"{THRESHOLDS['linear_points']:.2f}")


@_claim("rotation_aligns_early", "The rotation Q of W_TV aligns early-layer θ with the task's answer directions",
        "Fig. 9A-B (Llama3.1-8B)", "tvlens analyze rotation --model {model} --task {task} --json",
        lambda x: at_least(x["gain"], THRESHOLDS["rotation_margin"],
                           "mean alignment gain of Qθ over θ at the early half of layers: {value:+.3f}", strict=True))
def _rotation(cc) -> Measurement:
    rows = [r for r in cc.rotation().rows if r["layer"] < cc.n_layers / 2]
    gains = [r["alignment_Qtheta"] - r["alignment_theta"] for r in rows]
    gain = statistics.mean(gains) if gains else None
    return Measurement({"gain": gain}, gain, None, (cc.task.name,), tuple(r["layer"] for r in rows),
                       ", ".join(f"L{r['layer']}: {r['alignment_theta']:.2f} -> {r['alignment_Qtheta']:.2f}" for r in rows))


@_claim("cos_rises_with_depth", "cos(θ, Qθ) rises with depth: rotation early, stretch late",
        "Fig. 9C (Llama3.1-8B)", "tvlens analyze rotation --model {model} --task {task} --json",
        lambda x: at_least(x["rho"], THRESHOLDS["rise_rho"], "Spearman rho of cos(θ, Qθ) with the layer: {value:.2f}"))
def _rise(cc) -> Measurement:
    from tvlens.analysis import spearman

    rows = cc.rotation().rows
    layers = [float(r["layer"]) for r in rows]
    cos = [float(r["cos_theta_Qtheta"]) for r in rows]
    rho = spearman(layers, cos) if len(rows) >= 2 else None
    return Measurement({"rho": rho}, rho, None if rho is None else fisher_interval(rho, len(rows)), (cc.task.name,),
                       tuple(int(x) for x in layers), ", ".join(f"L{int(a)}: {b:.2f}" for a, b in zip(layers, cos)))


def _judge_transition(x) -> tuple[Verdict, str]:
    if x["transition"] is None or x["icl_layer"] is None:
        missing = "the transition layer" if x["transition"] is None else "an ICL-beats-zero-shot layer"
        return UNTESTABLE, f"no {missing} in the measured layers"
    tol = max(1, round(THRESHOLDS["transition_layers"] * x["n_layers"]))
    return at_most(float(abs(x["transition"] - x["icl_layer"])), float(tol),
                   f"|transition layer {x['transition']} - ICL layer {x['icl_layer']}| = {{value:.0f}} layers")


@_claim("transition_matches_icl", "The rotation-to-stretch transition layer is where ICL starts to beat zero-shot",
        "Sec. 5 (Llama3.1-8B)", "tvlens analyze rotation --model {model} --task {task} --json", _judge_transition)
def _transition(cc) -> Measurement:
    r = cc.rotation()
    value = None if r.transition_layer is None or r.icl_layer is None else float(abs(r.transition_layer - r.icl_layer))
    return Measurement({"transition": r.transition_layer, "icl_layer": r.icl_layer, "n_layers": cc.n_layers}, value, None,
                       (cc.task.name,), tuple(row["layer"] for row in r.rows),
                       f"transition {r.transition_layer}, ICL beats zero-shot from {r.icl_layer}")


# --- geometry: Figure 4 and two follow-up questions --------------------------------------------


def _geometry(cc):
    out = cc.analysis("geometry")
    by_type = {type(r).__name__: r for r in out}
    return by_type


@_claim("task_clusters", "LTVs of one task cluster tightly and sit apart from other tasks' LTVs",
        "Fig. 4, 22-28 (seven tasks, each model)", "tvlens analyze geometry --model {model} --task {task} --json",
        lambda x: at_least(x["gap"], THRESHOLDS["cluster_gap"], "within-task minus between-task mean cosine: {value:.2f}"))
def _clusters(cc) -> Measurement:
    cm = _geometry(cc)["CosineMatrix"]
    n = len(cm.tasks)
    within = [float(cm.cos[i, j]) for i in range(n) for j in range(n) if i < j and cm.tasks[i] == cm.tasks[j]]
    between = [float(cm.cos[i, j]) for i in range(n) for j in range(n) if i < j and cm.tasks[i] != cm.tasks[j]]
    if not within or not between:
        return Measurement({"gap": None}, None, None, tuple(dict.fromkeys(cm.tasks)), (cc.layer,))
    gap = statistics.mean(within) - statistics.mean(between)
    return Measurement({"gap": gap}, gap, None, tuple(dict.fromkeys(cm.tasks)), (cc.layer,),
                       f"within {statistics.mean(within):.2f} ({len(within)} pairs), between {statistics.mean(between):.2f} "
                       f"({len(between)} pairs)")


@_claim("little_transfer", "A task's LTV does little for other tasks",
        "not in the paper (a follow-up question; the paper shows only the cosines)",
        "tvlens analyze geometry --model {model} --task {task} --json",
        lambda x: at_most(x["gain"], THRESHOLDS["transfer_max"], "mean gain of another task's vector over zero-shot: {value:+.2f}"))
def _transfer(cc) -> Measurement:
    tr = _geometry(cc)["Transfer"]
    gains = [float(tr.correct[i, j]) / int(tr.n[j]) - float(tr.zero_shot_correct[j]) / int(tr.n[j])
             for i, vt in enumerate(tr.vector_tasks) for j, t in enumerate(tr.tasks) if vt != t]
    gain = statistics.mean(gains) if gains else None
    return Measurement({"gain": gain}, gain, None, tuple(tr.tasks), (cc.layer,), f"{len(gains)} off-diagonal cells")


@_claim("composition", "The sum of two tasks' LTVs performs their composition",
        "not in the paper (a follow-up question)", "tvlens analyze geometry --model {model} --task {task} --json",
        lambda x: (UNTESTABLE, "no composed task uses the first task") if x["gap"] is None else
        at_least(x["gap"], THRESHOLDS["composition_margin"],
                 "best sum minus the better single vector on the composed task: {value:+.2f}", strict=True))
def _composition(cc) -> Measurement:
    comp = _geometry(cc).get("Composition")
    if comp is None:
        return Measurement({"gap": None}, None, None, (cc.task.name,), (cc.layer,))
    acc = comp.accuracies
    singles = max(acc.get("a", 0.0), acc.get("b", 0.0))
    sums = {c: a for c, a in acc.items() if "+" in c}
    best = max(sums, key=sums.get)
    gap = sums[best] - singles
    correct = dict(zip(comp.conditions, (int(k) for k in comp.correct)))
    single = max(("a", "b"), key=lambda c: correct.get(c, 0))
    return Measurement({"gap": gap}, gap, diff_interval(correct[best], comp.n, correct.get(single, 0), comp.n),
                       (comp.task, comp.task_a, comp.task_b), (cc.layer,),
                       f"{comp.task}: {best} {sums[best]:.2f} vs {single} {singles:.2f} (n={comp.n})")
