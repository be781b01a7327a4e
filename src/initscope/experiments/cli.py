"""``initscope experiment NAME [--option ...] [--out DIR]``: run one experiment, print its
summary and write ``NAME.png``, ``NAME.svg``, ``NAME.json`` and ``NAME.csv`` into DIR.

The top-level CLI wires it in with ``add_parser(subparsers)``; each experiment module
declares its own options in ``add_arguments(parser)``, named like the function's keywords.
A progress bar appears on stderr when it is a terminal and CI is not set.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["add_parser", "run", "NAMES", "DEFAULT_OUT"]

NAMES = ("udl", "he2015", "mean_shift", "low_precision", "width")
DEFAULT_OUT = Path("initscope-experiments")


def _module(name: str) -> Any:
    return importlib.import_module(f"initscope.experiments.{name}")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``experiment`` subcommand to ``subparsers`` (from ``add_subparsers``); returns it."""
    parser = subparsers.add_parser(
        "experiment", help="reproduce an experiment: measurement beside theory, as figures and data",
        description="Run one experiment, print what it shows, and write NAME.png/.svg/.json/.csv.")
    names = parser.add_subparsers(dest="experiment", required=True, metavar="NAME")
    for name in NAMES:
        module = _module(name)
        sub = names.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0],
                               description=(module.__doc__ or "").strip().split("\n\n")[0])
        module.add_arguments(sub)
        sub.add_argument("--out", type=Path, default=DEFAULT_OUT,
                         help=f"directory for {name}.png/.svg/.json/.csv (default {DEFAULT_OUT})")
        sub.set_defaults(run=run)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``args.experiment`` with the options in ``args``; write the files; return the exit code."""
    function = getattr(_module(args.experiment), args.experiment)
    accepted = inspect.signature(function).parameters
    options = {k: v for k, v in vars(args).items() if k in accepted and k != "progress"}
    try:
        result = function(**options, progress=True)
    except ModuleNotFoundError as error:
        print(f"initscope: error: {error}", file=sys.stderr)
        return 2
    paths = result.save(args.out)
    out.write(result.text() + "\n")
    out.write("wrote " + ", ".join(str(p) for p in paths) + "\n")
    return 0
