"""The helpers every ``tvlens`` subcommand module shares: parsers, common options, output checks, JSON rounding.

:mod:`tvlens.cli._main` (parsing and dispatch) and each subcommand module import this one, never each other.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

from tvlens.errors import ConfigError, OutputExistsError

JSON_DECIMALS = 4  # floats in --json output are rounded to this many decimals


class UsageError(Exception):
    """A command line argparse rejects (unknown option, missing value, ...)."""


class Parser(argparse.ArgumentParser):
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


def check_output(path: str | os.PathLike, overwrite: bool, option: str = "--out", *, folder: bool = False) -> None:
    """Refuse an existing output, or one that cannot be written (a parent that is a file, a folder that is not
    writable; :func:`tvlens._validate.check_output_path`), before any work is done (the save refuses again, atomically)."""
    from tvlens._validate import check_output_dir, check_output_path

    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(f"{option} {str(path)!r} already exists; pass --overwrite to replace it, or choose another path")
    (check_output_dir if folder else check_output_path)(path, option)


def check_distinct(a: str | os.PathLike | None, b: str | os.PathLike | None, what: str) -> None:
    if a is not None and b is not None and Path(a).resolve() == Path(b).resolve():
        other = Path(a).with_name(f"{Path(a).stem}.ckpt{Path(a).suffix}")
        raise ConfigError(f"{what} name the same file {str(a)!r}; give the checkpoint a path of its own, e.g. {str(other)!r}")


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


def start(args: argparse.Namespace, *, task: bool = True):
    """What an analysis command does first: refuse a bad ``--html`` before any work, start the clock, load
    ``--model`` and (``task``) resolve ``--task`` with ``--template``. Returns ``(t0, model, task or None)``."""
    import tvlens as tv

    if getattr(args, "html", None):
        check_output(args.html, True, "--html")
    if getattr(args, "save_vectors", None) and not getattr(args, "vectors", None):
        check_output(args.save_vectors, True, "--save-vectors", folder=True)
    t0 = time.perf_counter()
    model = tv.load_model(args.model)
    return t0, model, (tv.tasks.resolve(args.task, model_name=args.model, template=args.template) if task else None)
