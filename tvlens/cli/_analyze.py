"""``tvlens analyze <what>``: the mechanistic analyses of a task vector, one subcommand each.

Each subcommand lives in its own module ``tvlens.cli._analyze_<what>``, which defines
``add_parser(add) -> None``: ``add(name, fn, help)`` creates the subcommand's parser (with the
shared ``--json``/``--debug`` options and ``fn`` as its handler) and returns it for the module's own
options. A module that is not there yet is simply not offered.
"""

from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS = ("heads", "lens", "geometry")  # module suffixes; `lens` may register several (lens, linear)


def register(sub, parser_class) -> None:
    """Add ``analyze`` to the top-level subparsers ``sub``."""
    ap = sub.add_parser("analyze", help="mechanistic analyses of a task vector (heads, lens, linear, geometry)",
                        description="Mechanistic analyses of a task vector.")
    inner = ap.add_subparsers(dest="analysis", required=True, parser_class=parser_class)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        from tvlens.cli._main import add_command

        return add_command(inner, name, fn, help)

    for what in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"tvlens.cli._analyze_{what}")
        except ModuleNotFoundError as e:
            if e.name != f"tvlens.cli._analyze_{what}":
                raise
            continue
        module.add_parser(add)
