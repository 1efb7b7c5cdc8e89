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
import math
import os
import sys
import traceback
import warnings
from pathlib import Path

from tvlens.errors import ConfigError, OutputExistsError, TvlensError, TvlensWarning

JSON_DECIMALS = 4  # floats in --json output are rounded to this many decimals


class UsageError(Exception):
    """A command line argparse rejects (unknown option, missing value, ...)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit; let main() report it
        raise UsageError(f"{self.prog}: {message}")


def round_floats(obj, ndigits: int = JSON_DECIMALS):
    """``obj`` with every float rounded to ``ndigits`` decimals and nan/inf as None (valid JSON)."""
    if isinstance(obj, float):
        return round(obj, ndigits) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: round_floats(v, ndigits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, ndigits) for v in obj]
    return obj


def ci95(accuracy: float, n: int) -> list[float]:
    """The 95% Wilson interval of an accuracy on ``n`` queries, as a JSON pair."""
    from tvlens.stats import accuracy_interval

    return list(accuracy_interval(accuracy, n))


def check_output(path: str | os.PathLike, overwrite: bool, option: str = "--out") -> None:
    """Refuse an existing output before any work is done (the save refuses again, atomically)."""
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(f"{option} {str(path)!r} already exists; pass --overwrite to replace it, or choose another path")


def check_distinct(a: str | os.PathLike | None, b: str | os.PathLike | None, what: str) -> None:
    if a is not None and b is not None and Path(a).resolve() == Path(b).resolve():
        other = Path(a).with_name(f"{Path(a).stem}.ckpt{Path(a).suffix}")
        raise ConfigError(f"{what} name the same file {str(a)!r}; give the checkpoint a path of its own, e.g. {str(other)!r}")


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


def add_command(sub, name: str, fn, help: str) -> argparse.ArgumentParser:
    """A (sub)command's parser with the options every command shares (--json, --debug) and ``fn`` as its handler."""
    sp = sub.add_parser(name, help=help, description=help)
    sp.add_argument("--json", action="store_true", help="print one JSON document on stdout (errors too)")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of a failure")
    sp.add_argument("--no-cache", action="store_true", default=argparse.SUPPRESS,
                    help="neither load nor save learned task vectors in the vector store ($TVLENS_CACHE_DIR/vectors)")
    sp.set_defaults(fn=fn)
    return sp


def add_template_option(sp: argparse.ArgumentParser) -> None:
    """``--template``, beside every ``--task``/``--tasks`` option."""
    sp.add_argument("--template", default=None,
                    help="prompt template of the task(s): arrow ('{x} ->'), qa ('Q: {x}\\nA:', the function-vectors "
                         "format) or a query string with {x} (\\n for a newline); default: each task's own. "
                         "'capitalize[arrow]' as a task name says the same")


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
    return p


def _baseline_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--fv-shots", type=int, default=None,
                    help="demonstrations of the FV's clean prompts (default: 8 on toy, trained on <= 8; 10 otherwise)")
    sp.add_argument("--vanilla-shots", type=int, default=5, help="demonstrations of the Vanilla TV's ICL prompts (default 5)")
    sp.add_argument("--top-k", type=int, default=10, help="heads summed into the FV (default 10)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits, demonstrations and LTV config")
    sp.add_argument("--html", default=None, help="also write a self-contained offline HTML page (plots and tables)")
    add_executor_options(sp)


def add_executor_options(sp: argparse.ArgumentParser) -> None:
    """``--executor``/``--workers``/``--address``: where a command's independent LTV jobs run (tvlens._executor)."""
    sp.add_argument("--executor", choices=["local", "ray"], default=None,
                    help="run the LTV trainings as parallel jobs: local worker processes (--workers N) or Ray "
                         "(pip install 'tvlens[ray]'; a local instance, or --address of a cluster). Same vectors")
    sp.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes of --executor local (default: CPU count)")
    sp.add_argument("--address", default=None, help="Ray cluster address for --executor ray (default: start a local instance)")


def executor_from_args(args: argparse.Namespace):
    """The executor the options name, or None (train in this process)."""
    from tvlens._executor import get_executor

    kind, workers, address = getattr(args, "executor", None), getattr(args, "workers", None), getattr(args, "address", None)
    if kind is None and workers is None and address is None:
        return None
    if kind is None:
        kind = "ray" if address is not None else "local"
    return get_executor(kind, workers=workers or max(1, os.cpu_count() or 1), address=address)


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
        from tvlens.store import disabled

        with warnings.catch_warnings(record=True) as caught, (disabled() if args.no_cache else contextlib.nullcontext()):
            payload, text = args.fn(args)  # the usual warning filters still apply
    except (Exception, KeyboardInterrupt) as e:
        _show(caught)
        return _fail(e, args.json, args.debug)
    _show(caught)
    ours = [w for w in caught if issubclass(w.category, TvlensWarning)]
    if args.json and ours:
        payload = {**payload, "warnings": [f"{w.category.__name__}: {w.message}" for w in ours]}
    try:
        _emit(args, payload, text)
    except BrokenPipeError:  # e.g. `tvlens demo --json | head`
        sys.stderr.close()
    return 0


def _show(caught) -> None:
    """tvlens's warnings as one line each on stderr; other libraries' warnings as Python shows them."""
    for w in caught:
        if issubclass(w.category, TvlensWarning):
            print(f"tvlens: warning: {w.category.__name__}: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
