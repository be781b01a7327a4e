"""The ``initscope`` command: a thin layer over the public API.

Subcommands: ``gain`` (moments and gains of an activation), ``probe SPEC`` (a layer table and
findings), ``init SPEC`` (the InitPlan), ``demo`` (the guided tour, what ``make demo`` runs),
``experiment NAME`` (:mod:`initscope.experiments.cli`), ``report RUN`` (the HTML report of a
recorded run).

A SPEC names a model: ``zoo:NAME[?key=value&...]`` (a built-in model, e.g.
``zoo:mlp?depth=50&width=100``; ``batch`` (default 32), ``seed`` and ``size`` shape its
example input), ``path/to/file.py:factory`` or ``package.module:factory``. The factory takes
no arguments and returns a model, or a ``(model, example_input)`` pair.

Exit codes:
    0  success (``probe``: no finding at or above the ``--fail-on`` level).
    1  ``probe``: findings reached the ``--fail-on`` level (default: error).
    2  bad usage: an unknown option, a SPEC that does not resolve, a factory that raises, an
       input the model rejects, an output path that cannot be written. One line on stderr;
       ``--debug`` adds the traceback.
    3  an unexpected error inside initscope (a bug: rerun with ``--debug`` and report it).

``main(argv, out=..., err=..., width=..., color=..., tty=...)`` takes its streams and terminal
settings as arguments, so tests get stable text.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import traceback
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any, TextIO

from initscope import __version__
from initscope._spec import load_input, resolve_spec, writable
from initscope.activations import ACTIVATIONS
from initscope.errors import ArgumentError, ForwardError, InitscopeError
from initscope.experiments.cli import add_parser as add_experiment_parser
from initscope.moments import moments, torch_gain

__all__ = ["main", "gain_table"]

_COLUMNS = ("activation", "E[phi]", "E[phi^2]", "Var[phi]", "E[phi'^2]", "gain fwd", "gain bwd", "torch")
PROBE_INITS = ("none", "torch_default", "kaiming", "xavier", "lsuv")


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


def _apply_init(model: Any, scheme: str, x: Any, seed: int, con: Any) -> tuple[Any, Any]:
    """(InitPlan or None, LsuvReport or None) after applying ``scheme`` in place."""
    from initscope.initialize import initialize
    from initscope.lsuv import lsuv

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = None if scheme in ("none", "lsuv") else initialize(model, scheme, example_input=x, seed=seed)
        report = lsuv(model, x) if scheme == "lsuv" else None
    for w in caught:
        con.print(f"note: {' '.join(str(w.message).split())}")
    return plan, report


def _write(path: str, text: str, what: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise _usage(f"cannot write the {what} to {path!r}: {e.strerror or e}; pass a writable path")


def _usage(message: str) -> InitscopeError:
    return ArgumentError(message)


def _cross_entropy(output: Any) -> Any:
    """Cross entropy against fixed random labels (seed 0): classes on the last dim."""
    import torch
    import torch.nn.functional as F

    if not isinstance(output, torch.Tensor) or output.dim() < 2:
        raise TypeError("--loss ce needs a tensor output with classes on the last dimension")
    logits = output.reshape(-1, output.shape[-1])
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(logits.shape[1], (logits.shape[0],), generator=gen).to(logits.device)
    return F.cross_entropy(logits, labels)


def _probe(args: argparse.Namespace, out: TextIO) -> int:
    from initscope import distributed

    with distributed.launched() as group:  # under torchrun: each rank probes its part of the batch
        if group and not distributed.is_writer():  # only rank 0 prints and writes
            from initscope.report.text import console
            args.console, args.html, args.json = console(io.StringIO()), None, None
        return _probe_ranks(args, out, distributed.batch_shard if group else (lambda x: x))


def _probe_ranks(args: argparse.Namespace, out: TextIO, shard: Callable) -> int:
    from initscope.probe import probe
    from initscope.report.text import findings_block, layer_table

    con = args.console
    for path in (args.html, args.json):
        if path:
            writable(path)
    model, example = resolve_spec(args.spec)
    x, where = load_input(args, example)
    x = shard(x)
    try:
        plan, report = _apply_init(model, args.init, x, args.seed, con)
        trace = probe(model, x, loss_fn=_cross_entropy if args.loss == "ce" else None)
    except ForwardError as e:
        raise ForwardError(f"{e}; the input was {where}", e.layer, e.completed) from e
    loss = "" if trace.loss is None else f", loss {trace.loss:.4g}"
    con.print(f"initscope probe {args.spec}: init {args.init}, input {where}, {args.loss}{loss}", soft_wrap=True)
    con.print(layer_table(trace))
    con.print(findings_block(trace.findings))
    label = "as built" if args.init == "none" else args.init
    if args.html:
        from initscope.report.html import Run, report_html, write_report

        page = report_html(f"initscope probe {args.spec}", [Run(label, trace, plan, report)],
                           subtitle=f"init {args.init}; input {where}; loss {args.loss}{loss}")
        try:
            write_report(args.html, page)
        except OSError as e:
            raise _usage(f"cannot write the HTML report to {args.html!r}: {e.strerror or e}; pass a writable path")
        con.print(f"HTML report: {args.html}")
    if args.json:
        from initscope.report.html import jsonable

        data = {"spec": args.spec, "init": args.init, "loss": args.loss, "input": where, "trace": trace.to_dict(),
                "plan": plan and plan.to_dict(), "lsuv": report and report.to_dict()}
        _write(args.json, json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n", "JSON")
        con.print(f"JSON: {args.json}")
    levels = ("error",) if args.fail_on == "error" else ("error", "warning")
    return int(any(f.severity in levels for f in trace.findings))


def _init(args: argparse.Namespace, out: TextIO) -> int:
    from initscope.report.text import lsuv_table, plan_table

    con = args.console
    if args.save:
        writable(args.save)
    model, example = resolve_spec(args.spec)
    x, _ = load_input(args, example, required=args.scheme == "lsuv")
    plan, report = _apply_init(model, args.scheme, x, args.seed, con)
    con.print(plan_table(plan) if plan is not None else lsuv_table(report))
    if args.save:
        import torch

        try:
            torch.save(model.state_dict(), args.save)
        except OSError as e:
            raise _usage(f"cannot write the weights to {args.save!r}: {e.strerror or e}; pass a writable path")
        con.print(f"weights: {args.save}")
    return 0


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    from initscope.report.demo import demo

    writable(str(Path(args.out) / "index.html"))
    demo(args.out, budget=args.budget, con=args.console)
    return 0


# --- `initscope report RUN` (issue 14) ---
def _report(args: argparse.Namespace, out: TextIO) -> int:
    from initscope.runs import Run

    writable(args.o)
    run = Run.load(args.run_path)
    run.report(args.o, title=args.title or f"Run {Path(args.run_path).name}")
    findings = run.findings
    print(f"{run!r}\n{len(findings)} findings; report written to {args.o}", file=out)
    for f in findings[:10]:
        print(f"  {f.severity}: {f.message}", file=out)
    return 0


def _add_report_parser(sub, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser("report", parents=[common], help="the HTML report of a recorded run (a run file)")
    r.add_argument("run_path", metavar="RUN", help="a run file written by Recorder.save or a RunWriter sink")
    r.add_argument("-o", default="report.html", metavar="PATH", help="where to write the page (default report.html)")
    r.add_argument("--title", default="", help="the page title (default: Run NAME)")
    r.set_defaults(run=_report)


def _input_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--input-shape", metavar="N,C,...", help="an N(0, 1) input of this shape, e.g. 8,3,32,32")
    group.add_argument("--input", metavar="FILE.pt", help="an input saved with torch.save (tensor, tuple or dict)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input and of the init (default 0)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="initscope", description="Initialize networks correctly and see what "
                                     "happens to activations and gradients inside them.",
                                     epilog="exit codes: 0 success, 1 probe findings at the --fail-on level, "
                                            "2 bad usage, 3 internal error")
    parser.add_argument("--version", action="version", version=f"initscope {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gain", parents=[common], help="moments and gains of one activation")
    g.add_argument("activation", help=f"one of: {', '.join(ACTIVATIONS)}")
    g.add_argument("--param", type=float, default=None, help="slope/alpha/beta of the activation")
    g.add_argument("--q", type=float, default=1.0, help="second moment of the pre-activation (default 1)")
    g.set_defaults(run=_gain)
    p = sub.add_parser("probe", parents=[common], help="per-layer statistics and findings of a model",
                       description="Exit codes: 0 healthy, 1 findings at the --fail-on level, 2 bad usage.")
    p.add_argument("spec", metavar="SPEC", help="zoo:NAME[?key=value&...], path/to/file.py:factory or module:factory")
    _input_options(p)
    p.add_argument("--init", choices=PROBE_INITS, default="none", help="init to apply first (default none)")
    p.add_argument("--loss", choices=("mse0", "ce"), default="mse0",
                   help="mse0: 0.5 mean(output^2), least squares against 0 (default); ce: cross entropy, random labels")
    p.add_argument("--html", metavar="PATH", help="write the self-contained HTML report here")
    p.add_argument("--json", metavar="PATH", help="write the raw statistics and findings as JSON here")
    p.add_argument("--fail-on", choices=("warning", "error"), default="error",
                   help="exit 1 when a finding reaches this level (default error)")
    p.set_defaults(run=_probe)
    i = sub.add_parser("init", parents=[common], help="initialize a model and print the InitPlan")
    i.add_argument("spec", metavar="SPEC", help="as for probe")
    from initscope.initialize import SCHEMES_ALL

    i.add_argument("--scheme", choices=(*SCHEMES_ALL, "lsuv"), default="kaiming", help="default kaiming")
    _input_options(i)
    i.add_argument("--save", metavar="weights.pt", help="save the initialized state_dict here")
    i.set_defaults(run=_init)
    d = sub.add_parser("demo", parents=[common], help="the guided tour (what `make demo` runs)")
    d.add_argument("--out", default="initscope-report", help="report directory (default initscope-report)")
    d.add_argument("--budget", choices=("full", "ci"), default="full", help="ci: a smaller CNN, for tests")
    d.set_defaults(run=_demo)
    add_experiment_parser(sub)
    _add_report_parser(sub, common)
    return parser


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None, *,
         width: int | None = None, color: bool | None = None, tty: bool | None = None) -> int:
    """Run the CLI and return the exit code (see the module docstring)."""
    from initscope.report.text import console

    err = err or sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help, --version (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else 2
    out = out or sys.stdout
    args.console = console(out, width=width, color=color, tty=tty)  # handlers print tables through it
    debug = getattr(args, "debug", False)
    try:
        return args.run(args, out)
    except InitscopeError as error:
        if debug:
            traceback.print_exc(file=err)
        print(f"initscope: error: {' '.join(str(error).split())}", file=err)
        return 2
    except Exception as error:  # noqa: BLE001 - a bug: one line unless --debug
        if debug:
            traceback.print_exc(file=err)
        print(f"initscope: internal error: {type(error).__name__}: {' '.join(str(error).split())}; "
              "rerun with --debug for the traceback and report it", file=err)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
