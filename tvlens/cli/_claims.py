"""`tvlens claims`: every claim of the paper re-measured on one model, with verdicts."""

from __future__ import annotations

import argparse

from tvlens.cli._common import add_executor_options, add_template_option, check_output


def add_parser(cmd) -> None:
    sp = cmd("claims", cmd_claims, "every claim of the paper on one model: measured value and interval, verdict, command")
    sp.add_argument("--model", default="toy", help="model spec (default: the embedded model)")
    sp.add_argument("--tasks", nargs="+", default=None,
                    help="tasks (default: toy/antonym toy/sentiment on toy, capitalize antonym otherwise); the first is the "
                         "task of the per-head, lens and geometry claims")
    add_template_option(sp)
    sp.add_argument("--layer", type=int, default=None, help="LTV layer of the per-head claims (default: the middle layer)")
    sp.add_argument("--only", nargs="+", default=None, help="only these claims (keys as in the table)")
    sp.add_argument("--n", type=int, default=None, help="test queries per analysis (default: the whole test split)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits, demonstrations and LTVs")
    sp.add_argument("--html", default=None, help="also write the table as an offline HTML page")
    sp.add_argument("--overwrite", action="store_true", help="replace --html if it exists (default: refuse)")
    add_executor_options(sp)  # the sweeps' and the comparison's LTVs as parallel jobs


def cmd_claims(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv
    from tvlens._claims import claim_keys
    from tvlens.cli._common import executor_from_args

    if args.html:
        check_output(args.html, args.overwrite, "html")
    if args.only:
        claim_keys(args.only)  # before the model loads
    if args.n is not None and args.n < 1:
        raise tv.errors.ConfigError(f"--n must be >= 1, got {args.n}")
    model = tv.load_model(args.model)
    tasks = None if args.tasks is None else [tv.tasks.resolve(t, model_name=args.model, template=args.template) for t in args.tasks]
    res = tv.claims(model, tasks, model_name=args.model, layer=args.layer, only=args.only, seed=args.seed, n=args.n,
                    progress=bool(getattr(args, "verbose", False)), executor=executor_from_args(args), spec=args.model)
    payload = res.payload()
    text = res.text()
    if args.html:
        payload["html"] = res.write_html(args.html)
        text += f"\nwrote {payload['html']}"
    return payload, text
