"""``tvlens analyze <what>``: the mechanistic analyses of a task vector, one subcommand each.

Every analysis registered in :mod:`tvlens.analysis` (``tv.analysis.analyses()``) gets its
subcommand from its declaration: the common inputs (``--model --task --template --vector
--layer --n --seed --html``) plus one option per field of its options dataclass. The command
parses, calls the analysis and prints its results' ``payload()`` (``--json``) or ``text()``.

A few composite commands keep hand-written options (modules ``tvlens.cli._analyze_<what>`` in
:data:`SUBCOMMANDS`: ``heads`` runs the whole circuit, ``lens``/``linear`` train per-layer LTVs in
parallel, ``geometry`` works on several tasks); each defines ``add_parser(add) -> None``.
"""

from __future__ import annotations

import argparse
import importlib
import time

SUBCOMMANDS = ("heads", "lens", "geometry")  # hand-written module suffixes; `lens` registers lens and linear


def register(sub, parser_class) -> None:
    """Add ``analyze`` to the top-level subparsers ``sub``."""
    from tvlens.analysis import analyses

    ap = sub.add_parser("analyze", help="mechanistic analyses of a task vector (heads, lens, linear, geometry, ...)",
                        description="Mechanistic analyses of a task vector.")
    inner = ap.add_subparsers(dest="analysis", required=True, parser_class=parser_class)
    taken: set[str] = set()

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        from tvlens.cli._common import add_command

        taken.add(name)
        return add_command(inner, name, fn, help)

    for what in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"tvlens.cli._analyze_{what}")
        except ModuleNotFoundError as e:
            if e.name != f"tvlens.cli._analyze_{what}":
                raise
            continue
        module.add_parser(add)
    for spec in analyses():
        if spec.cli and spec.name not in taken:
            add_parser_for(add, spec)


def add_parser_for(add, spec) -> argparse.ArgumentParser:
    """The subcommand of a registered analysis: the common inputs, then its options' fields."""
    from tvlens.analysis import option_specs
    from tvlens.cli._common import add_template_option

    sp = add(spec.name, cmd_registered, (spec.description or spec.title).replace("%", "%%"))  # argparse formats help with %
    sp.add_argument("--model", default="toy", help="model spec: toy (default), smollm2, a .gguf file, an HF folder, a TL name")
    sp.add_argument("--task", required=True, help="task name (see `tvlens tasks`)")
    add_template_option(sp)
    sp.add_argument("--vector", default=None, help="a task-vector file from `tvlens train` (default: train an LTV with the "
                                                   "default recipe at --layer)")
    sp.add_argument("--layer", type=int, default=None, help="layer of the LTV trained when no --vector is given (default: the middle layer)")
    sp.add_argument("--n", type=int, default=None, help="use only the first N test queries (default: all)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits (a --vector's own split seed wins) and the LTV")
    sp.add_argument("--html", default=None, help="also write a self-contained offline HTML page (plots and tables)")
    for o in option_specs(spec.options):
        if o.type is bool:
            sp.add_argument(o.flag, dest=o.name, action=argparse.BooleanOptionalAction, default=o.default, help=o.help.replace("%", "%%"))
        else:
            sp.add_argument(o.flag, dest=o.name, type=o.type, nargs=o.nargs, choices=o.choices, default=o.default, help=o.help.replace("%", "%%"))
    sp.set_defaults(analysis_spec=spec)
    return sp


def cmd_registered(args: argparse.Namespace) -> tuple[dict, str]:
    """Run a registered analysis: parse, call, return its payload and text (nothing else)."""
    import dataclasses

    import tvlens as tv
    from tvlens.analysis import AnalysisContext, as_results, option_specs
    from tvlens.cli._common import check_output

    spec = args.analysis_spec
    if args.html:
        check_output(args.html, True, "--html")
    t0 = time.perf_counter()
    options = spec.options(**{o.name: getattr(args, o.name) for o in option_specs(spec.options)})  # validated here
    model = tv.load_model(args.model)
    task = tv.tasks.resolve(args.task, model_name=args.model, template=args.template)
    vector = None
    if args.vector:
        vector = tv.TaskVector.load(args.vector)
        from tvlens.analysis._inputs import check_vector

        check_vector(model, vector, task)
    ctx = AnalysisContext(model, args.model, task, args.layer, seed=args.seed, n=args.n, given_vector=vector)  # layer: default the middle
    results = as_results(spec.run(ctx, options))
    v = ctx.vector
    origin = {"path": args.vector} if args.vector else {"trained": True, "val_accuracy": ctx.ltv.val_accuracy}
    payload = {"analysis": spec.name, "model": args.model, "fingerprint": tv.fingerprint(model), "task": task.name,
               "split_seed": ctx.seed, "options": dataclasses.asdict(options),
               "vector": {**origin, "sites": [str(s) for s in v.sites], "norm": float(v.values.norm()), "method": v.method},
               "results": [r.payload() for r in results]}
    text = "\n\n".join([f"{spec.title}: {task.name} on {args.model}, vector at {', '.join(map(str, v.sites))}",
                        *(r.text() for r in results)])
    if args.html:
        from tvlens.cli._html import write_page

        path = write_page(args.html, f"tvlens analyze {spec.name}: {task.name} on {args.model}",
                          [(repr(r), r.plot(), r.to_frame()) for r in results])
        payload["html"] = str(path)
        text += f"\nwrote {path}"
    payload["seconds"] = round(time.perf_counter() - t0, 2)
    return payload, text
