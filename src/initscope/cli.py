"""The ``initscope`` command: a thin layer over the public API.

Exit codes: 0 success, 2 bad usage (an unknown activation, a bad number).
``main(argv, out=...)`` takes its output stream as an argument so tests can read it.
"""
from __future__ import annotations

import argparse
import sys
from typing import TextIO

from initscope import __version__
from initscope.activations import ACTIVATIONS
from initscope.errors import InitscopeError
from initscope.moments import moments, torch_gain

__all__ = ["main", "gain_table"]

_COLUMNS = ("activation", "E[phi]", "E[phi^2]", "Var[phi]", "E[phi'^2]", "gain fwd", "gain bwd", "torch")


def _torch_or_dash(name: str, param: float | None) -> str:
    try:
        return f"{torch_gain(name, param=param):.6g}"
    except InitscopeError:
        return "-"


def gain_table(names: list[str], q: float = 1.0, param: float | None = None) -> str:
    """A plain-text table of moments and gains, one row per activation.

    ``gain fwd`` = sqrt(q/E[phi^2]) (fan_in, for the layer *after* the activation);
    ``gain bwd`` = 1/sqrt(E[phi'^2]) (fan_out, for the layer *before* it);
    ``torch`` = ``torch.nn.init.calculate_gain``, or - where torch has none.
    """
    rows = [_COLUMNS]
    for name in names:
        m = moments(name, q, param=param)
        rows.append((m.name if param is None else f"{m.name}({param:g})", _num(m.mean), _num(m.second),
                     _num(m.variance), _num(m.deriv_second), _num(m.forward_gain),
                     _num(m.backward_gain), _torch_or_dash(name, param)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(value: float) -> str:
    """Six significant digits; quadrature noise below 1e-15 (tanh's mean) prints as 0."""
    return "0" if abs(value) < 1e-15 else f"{value:.6g}"


def _gain(args: argparse.Namespace, out: TextIO) -> int:
    table = gain_table([args.activation], args.q, args.param)
    out.write(f"Moments of phi(sqrt(q) z), z ~ N(0,1), q = {args.q:g}\n{table}\n")
    return 0


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    out.write("initscope: gains that keep second moments constant (He et al. 2015)\n")
    out.write("forward gain 1/sqrt(E[phi(z)^2]) scales the layer after phi (fan_in);\n")
    out.write("backward gain 1/sqrt(E[phi'(z)^2]) scales the layer before phi (fan_out).\n\n")
    out.write(gain_table(list(ACTIVATIONS)) + "\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="initscope", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"initscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gain", help="moments and gains of one activation")
    g.add_argument("activation", help=f"one of: {', '.join(ACTIVATIONS)}")
    g.add_argument("--param", type=float, default=None, help="slope/alpha/beta of the activation")
    g.add_argument("--q", type=float, default=1.0, help="second moment of the pre-activation (default 1)")
    g.set_defaults(run=_gain)
    d = sub.add_parser("demo", help="the built-in tour")
    d.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code."""
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    try:
        return args.run(args, out)
    except InitscopeError as error:
        print(f"initscope: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
