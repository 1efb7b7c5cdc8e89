"""``tvlens analyze heads``: which heads carry a task vector (saliency, exact effects, OV, sinks, ablations)."""

from __future__ import annotations

import argparse
import time

from tvlens.cli._common import add_template_option

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


def cmd_analyze_heads(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv
    from tvlens.analysis import AnalysisContext
    from tvlens.cli._common import start

    t0, model, task = start(args)
    given = tv.TaskVector.load(args.vector) if args.vector else None
    if given is not None:
        from tvlens.analysis._inputs import check_vector

        check_vector(model, given, task)  # the same checks (and warnings) as every analysis: analyze geometry --vectors too
    ctx = AnalysisContext(model, args.model, task, args.layer, seed=args.seed, n=args.n, given_vector=given, progress=not args.json)
    vector = ctx.vector  # the given one, or an LTV trained at --layer; ctx.seed: the vector's split seed when it has one
    c = tv.circuit(model, vector, task, n=args.n, fraction=args.fraction, n_random=args.n_random, seed=ctx.seed)
    vec = {**ctx.vector_origin(args.vector), "sites": [str(s) for s in vector.sites], "norm": float(vector.values.norm()), "method": vector.method}
    payload = {"model": args.model, "fingerprint": tv.fingerprint(model), "vector": vec, **c.payload(tuple(args.ablation))}
    text = c.text_of(payload, args.model, vec)
    if args.html:
        page = c.dashboard(args.html, kinds=tuple(payload["ablations"]))
        payload["html"] = str(page.path)
        text += f"\nwrote {page.path}"
    payload["seconds"] = round(time.perf_counter() - t0, 2)
    return payload, text
