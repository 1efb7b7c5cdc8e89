"""``tvlens report``: one offline HTML page with every analysis of a task vector for one task."""

from __future__ import annotations

import argparse
import time

from tvlens.cli._common import add_executor_options, add_template_option


def add_parser(cmd) -> None:
    sp = cmd("report", cmd_report, "one offline HTML page with every analysis (baselines, heads, lens, geometry) for one task")
    sp.add_argument("out", help="output .html path")
    sp.add_argument("--model", default="toy", help="model spec (default: the embedded model)")
    sp.add_argument("--task", required=True, help="task name (see `tvlens tasks`)")
    add_template_option(sp)
    sp.add_argument("--layer", type=int, default=None, help="layer of the LTV every section analyses (default: the middle layer)")
    sp.add_argument("--sections", nargs="+", default=None, help="only these sections (default: all; see the page's contents)")
    sp.add_argument("--skip", nargs="+", default=[], help="sections to leave out, e.g. --skip sweep compare on a large model")
    sp.add_argument("--n", type=int, default=None, help="test queries per analysis (default: the whole test split)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits, demonstrations and LTVs")
    sp.add_argument("--overwrite", action="store_true", help="replace the output if it exists (default: refuse)")
    add_executor_options(sp)  # the sweep's and the comparison's LTVs as parallel jobs


def cmd_report(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv
    from tvlens.cli._common import check_output, executor_from_args
    from tvlens.viz.report import build_report

    check_output(args.out, args.overwrite, "out")
    t0 = time.perf_counter()
    model = tv.load_model(args.model)
    task = tv.tasks.resolve(args.task, model_name=args.model, template=args.template)
    rep = build_report(model, task, model_name=args.model, layer=args.layer, sections=args.sections, skip=args.skip,
                       seed=args.seed, n=args.n, progress=bool(getattr(args, "verbose", False)),
                       executor=executor_from_args(args), spec=args.model)
    path = rep.write(args.out, overwrite=args.overwrite)
    # from the sections, not to_frame(): pandas turns a None error into NaN where another section has one
    payload = {"model": args.model, "fingerprint": rep.fingerprint, "task": rep.task, "layer": rep.layer, "html": str(path),
               "sections": [{"key": s.key, "title": s.title, "group": s.group, "results": len(s.results), "seconds": float(s.seconds),
                             "error": s.error if s.error else None, "reused_seconds": float(s.reused_seconds),
                             "reused_from": {k: float(t) for k, t in s.reused_from}} for s in rep.sections],
               "seconds": round(time.perf_counter() - t0, 2)}
    lines = [f"{r['key']:<10} {r['seconds']:>7.1f} s  " + (f"empty: {r['error']}" if r["error"] else f"{r['results']} result(s)")
             + "".join(f"; reused {t:.1f} s of {k}" for k, t in r["reused_from"].items()) for r in payload["sections"]]
    return payload, "\n".join([f"report: {rep.task} on {args.model}, LTV at layer {rep.layer}", *lines, f"wrote {path}"])
