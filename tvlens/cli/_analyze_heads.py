"""``tvlens analyze heads``: which heads carry a task vector (saliency, exact effects, OV, sinks, ablations)."""

from __future__ import annotations

import argparse
import time

from tvlens.cli._main import add_template_option

KINDS = ("zero", "mean", "path")


def add_parser(add) -> None:
    sp = add("heads", cmd_analyze_heads, "which attention heads carry a task vector: saliency vs exact ablation, "
             "OV products and reconstruction, attention sinks, key- vs random-head ablation (optionally an HTML dashboard)")
    sp.add_argument("--model", default="toy", help="model spec (default: the embedded model)")
    sp.add_argument("--task", required=True, help="task name (see `tvlens tasks`)")
    add_template_option(sp)
    sp.add_argument("--vector", default=None, help="a task-vector file from `tvlens train` (default: train an LTV "
                                                   "with the default recipe at --layer)")
    sp.add_argument("--layer", type=int, default=None, help="layer of the LTV trained when no --vector is given "
                                                            "(default: the middle layer)")
    sp.add_argument("--ablation", nargs="+", choices=KINDS, default=list(KINDS),
                    help="ablation kinds (default: all three); the JSON's `ablation` is the first")
    sp.add_argument("--fraction", type=float, default=0.1, help="share of heads called key heads (default 0.1)")
    sp.add_argument("--n-random", type=int, default=5, help="random head sets per ablation (default 5)")
    sp.add_argument("--n", type=int, default=None, help="use only the first N test queries (default: all)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits (a --vector's own split seed wins), "
                                                        "the LTV and the random head sets")
    sp.add_argument("--html", default=None, help="write the head-saliency dashboard to this .html file (replaced if present)")


def _vector(args, model, task):
    import tvlens as tv

    if args.vector:
        v = tv.TaskVector.load(args.vector)
        v.check_compatible(model)
        return v, {"path": args.vector}
    layer = args.layer if args.layer is not None else model.cfg.n_layers // 2
    res = tv.train_ltv(model, task, layers=[layer], splits=tv.make_splits(task, seed=args.seed),
                       config=tv.LTVConfig(seed=args.seed), progress=not args.json)
    return res.vector, {"trained": True, "val_accuracy": res.val_accuracy, "train_seconds": round(res.seconds, 2)}


def cmd_analyze_heads(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv
    from tvlens.cli._main import check_output

    if args.html:
        check_output(args.html, True, "--html")
    t0 = time.perf_counter()
    model = tv.load_model(args.model)
    task = tv.tasks.resolve(args.task, model_name=args.model, template=args.template)
    vector, origin = _vector(args, model, task)
    seed = int(vector.meta.get("split_seed", args.seed)) if args.vector else args.seed
    c = tv.circuit(model, vector, task, n=args.n, fraction=args.fraction, n_random=args.n_random, seed=seed)
    frame = c.heads()
    abl = {k: c._ablation_row(c.ablate(k)) for k in dict.fromkeys(args.ablation)}
    rec = c.reconstruction()
    sinks = frame[frame["layer"] >= c.layer].groupby("key")[["sink_mass", "final_mass"]].mean()  # heads that read θ
    key_layers = [layer for layer, _ in c.key_heads()]
    payload = {
        "model": args.model, "fingerprint": tv.fingerprint(model), "task": task.name, "n_queries": len(c.prompts),
        "vector": {**origin, "sites": [str(s) for s in vector.sites], "norm": float(vector.values.norm()), "method": vector.method},
        "key_fraction": args.fraction, "key_heads": [list(h) for h in c.key_heads()],
        "heads": [{"layer": int(r.layer), "head": int(r.head), "saliency": float(r.saliency), "rank": int(r.rank),
                   "exact_effect": float(r.exact_effect), "ov_norm": float(r.ov_norm), "ov_alignment": float(r.ov_alignment),
                   "label_proj": float(r.label_proj), "sink_mass": float(r.sink_mass), "final_mass": float(r.final_mass),
                   "key": bool(r.key)} for r in frame.itertuples() if r.layer >= c.layer],  # the heads that read θ
        "spearman_saliency_vs_exact": c.spearman(),
        "ablation": abl[args.ablation[0]], "ablations": abl,
        "ov_reconstruction": {"ltv": float(rec.ltv), "zero_shot": float(rec.zero_shot), "variant_a": float(rec.variant_a),
                              "variant_b": float(rec.variant_b), **_extra(rec)},
        "sinks": {**c.sinks().group_mass(),  # key heads vs the random sets' heads
                  "other_sink": float(sinks.loc[False, "sink_mass"]), "other_final": float(sinks.loc[False, "final_mass"])},
        "key_layer_histogram": [key_layers.count(i) for i in range(model.cfg.n_layers)],
        "injection_layer": c.layer,
    }
    text = _text(payload)
    if args.html:
        page = c.dashboard(args.html, kinds=tuple(abl))
        payload["html"] = str(page.path)
        text += f"\nwrote {page.path}"
    payload["seconds"] = round(time.perf_counter() - t0, 2)
    return payload, text


def _extra(rec) -> dict:
    """Any further scalar fields of the reconstruction result (MLP control, weighted variants)."""
    import dataclasses

    skip = {"ltv", "zero_shot", "variant_a", "variant_b"}
    return {f.name: float(getattr(rec, f.name)) for f in dataclasses.fields(rec)
            if f.name not in skip and isinstance(getattr(rec, f.name), float)}


def _text(p: dict) -> str:
    top = sorted(p["heads"], key=lambda r: r["rank"])[:10]
    lines = [f"{p['task']} on {p['model']}: vector at {', '.join(p['vector']['sites'])} (norm {p['vector']['norm']:.3g}), "
             f"{p['n_queries']} zero-shot test queries",
             f"{'head':>8} {'saliency':>10} {'exact':>9} {'OV norm':>9} {'sink':>6} {'key':>4}"]
    lines += [f"{'L%dH%d' % (r['layer'], r['head']):>8} {r['saliency']:>10.4g} {r['exact_effect']:>9.4f} {r['ov_norm']:>9.3g} "
              f"{r['sink_mass']:>6.3f} {'*' if r['key'] else '':>4}" for r in top]
    lines.append(f"Spearman(saliency, exact ablation effect) = {p['spearman_saliency_vs_exact']:.3f}")
    for kind, a in p["ablations"].items():
        lines.append(f"ablation ({kind}): none {a['none']:.3f}, key heads {a['key']:.3f}, "
                     f"random heads {a['random_mean']:.3f} ± {a['random_std']:.3f}")
    r = p["ov_reconstruction"]
    lines.append(f"OV reconstruction: LTV {r['ltv']:.3f}, zero-shot {r['zero_shot']:.3f}, "
                 f"A (sum of products) {r['variant_a']:.3f}, B (sum + vector) {r['variant_b']:.3f}")
    s = p["sinks"]
    lines.append(f"attention from the last token to the first token (sink) / to the vector's position: key heads "
                 f"{s['key_sink']:.3f} / {s['key_final']:.3f}, random heads {s['random_sink']:.3f} / {s['random_final']:.3f}, "
                 f"all other heads from layer {p['injection_layer']} on {s['other_sink']:.3f} / {s['other_final']:.3f}")
    lines.append(f"key heads per layer (vector at layer {p['injection_layer']}): {p['key_layer_histogram']}")
    return "\n".join(lines)
