"""Argument parsing and dispatch for the ``tvlens`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tvlens.errors import TvlensError


def _emit(args: argparse.Namespace, payload: dict, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(text)


def build_parser() -> argparse.ArgumentParser:
    from tvlens.cli import _commands as c

    p = argparse.ArgumentParser(prog="tvlens", description="Learned task vectors on TransformerLens models.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        sp.set_defaults(fn=fn)
        return sp

    sp = cmd("tasks", c.cmd_tasks, "list the registered tasks")
    sp.add_argument("--prefix", default=None, help="only names starting with this, e.g. toy/")

    sp = cmd("demo", c.cmd_demo, "zero-shot, ICL and learned-task-vector accuracy per task (embedded model by default)")
    sp.add_argument("--model", default="toy", help="model spec: toy (default), smollm2, a .gguf file, an HF folder, a TL name")
    sp.add_argument("--shots", type=int, nargs="+", default=None,
                    help="ICL shot counts (default: 1 2 4 8 on toy, 5 on other models)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits and demonstrations")
    sp.add_argument("--tasks", nargs="+", default=None,
                    help="task names (default: every toy benchmark task on toy; capitalize antonym capital otherwise)")
    sp.add_argument("--layer", type=int, nargs="+", default=None,
                    help="LTV layer(s); with several, each task keeps the layer of best validation accuracy "
                         "(default: the middle layer)")
    sp.add_argument("--no-ltv", action="store_true", help="skip training a learned task vector per task")

    sp = cmd("toy-train", c.cmd_toy_train, "retrain the embedded model from scratch (deterministic)")
    sp.add_argument("--out", default="tvlens-toy-checkpoint", help="output directory (default: ./tvlens-toy-checkpoint)")
    sp.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped recipe's)")
    sp.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    sp.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    sp.add_argument("--no-eval", action="store_true", help="skip the final ICL evaluation")

    sp = cmd("train", c.cmd_train, "train a learned task vector and save it")
    sp.add_argument("--model", default="toy", help="model spec (default: the embedded model)")
    sp.add_argument("--task", required=True, help="task name (see `tvlens tasks`)")
    sp.add_argument("--layer", type=int, nargs="+", default=None, help="layer(s) (default: the middle layer)")
    sp.add_argument("--position", type=int, nargs="+", default=[-1], help="position(s), -1 = last token")
    sp.add_argument("--shots", type=int, default=0, help="train on k-shot ICL prompts (default 0)")
    sp.add_argument("--preset", choices=["default", "paper"], default="default", help="training recipe")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--checkpoint", default=None, help="resumable run-state file")
    sp.add_argument("--out", required=True, help="output .safetensors path")

    sp = cmd("eval", c.cmd_eval, "zero-shot, ICL and with-vector accuracy on held-out queries")
    sp.add_argument("--model", default="toy")
    sp.add_argument("--task", required=True)
    sp.add_argument("--vector", default=None, help="a task-vector file from `tvlens train`")
    sp.add_argument("--scale", type=float, default=None, help="vector scale (default: the file's)")
    sp.add_argument("--icl-shots", type=int, nargs="+", default=[8])
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--allow-other-model", action="store_true", help="apply a vector made on another model of the same shape")

    sp = cmd("bench", c.cmd_bench, "speed benchmarks (ratios measured in one run)")
    sp.add_argument("--quick", action="store_true", help="shorter timing windows")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    try:
        payload, text = args.fn(args)
    except TvlensError as e:
        print(f"tvlens: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    try:
        _emit(args, payload, text)
    except BrokenPipeError:  # e.g. `tvlens demo --json | head`
        sys.stderr.close()
    return 0
