"""The guided tour that ``initscope demo`` (and ``make demo``) runs: the source material's
story in one run.

1. The textbook experiment (Prince, *Understanding Deep Learning*, fig. 7.7): 50 ReLU layers
   of width 100, beside the theory Var[f'] = D_h s2 Var[f] / 2.
2. A plain CNN from the zoo (He et al. 2015's plain nets, scaled down), probed under
   PyTorch's default init, then Kaiming, then LSUV, with the findings of each.
3. ``index.html`` with the interactive report, ``udl.png`` and ``cnn.png`` beside it, and a
   three-line summary.

``budget="ci"`` runs the same story on a smaller CNN and batch, for tests.

The demo runs torch on one thread and restores the count afterwards: its tensors are
small, and on a shared or busy CPU more threads than free cores made it 10-40x slower
(measured: 60 s instead of 6 s on 2 busy cores). One thread also fixes the summation order,
so the printed numbers are the same on every machine.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from initscope.errors import UnknownOptionError, choices_message

__all__ = ["demo", "DemoResult", "BUDGETS"]

#: name -> (udl seeds, udl batch, plain_cnn kwargs, CNN batch, image side)
BUDGETS: dict[str, tuple[tuple[int, ...], int, dict, int, int]] = {
    "full": ((0, 1, 2), 100, {"depth": 20, "channels": 32}, 64, 32),
    "ci": ((0,), 32, {"depth": 8, "channels": 8}, 16, 16),
}
INITS = (("PyTorch default", None), ("Kaiming", "kaiming"), ("LSUV", "lsuv"))


@dataclass(frozen=True)
class DemoResult:
    """What the demo made: the report's path, the PNGs, the three summary lines, the results."""

    path: Path
    pngs: tuple[Path, ...]
    summary: tuple[str, str, str]
    textbook: Any
    runs: tuple[Any, ...]
    seconds: float


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _probe_cnn(init: str | None, budget: tuple) -> Any:
    from initscope import zoo
    from initscope.initialize import initialize
    from initscope.lsuv import lsuv
    from initscope.probe import probe
    from initscope.report.html import Run

    _, _, kwargs, batch, size = budget
    model, x = zoo.build("plain_cnn", batch=batch, size=size, seed=0, **kwargs)
    plan = initialize(model, init, example_input=x, seed=0) if init == "kaiming" else None
    report = lsuv(model, x) if init == "lsuv" else None
    label = next(name for name, key in INITS if key == init)
    return Run(label, probe(model, x), plan, report)


def _textbook_table(result: Any) -> Any:
    import numpy as np

    from initscope.report.text import g, table

    width, depth = result.settings["width"], result.settings["depth"]
    tbl = table(None, [("s2", "right"), ("D_h s2 / 2", "right"), (f"theory Var[f_{depth}]", "right"),
                 ("measured (geo. mean)", "right")])
    with np.errstate(divide="ignore"):
        measured = np.exp(np.log(result.forward[:, :, -1]).mean(axis=1))
    for v, s2 in enumerate(result.variances):
        tbl.add_row(f"{s2:g}", f"{width * s2 / 2:g}", g(result.theory_forward[v, -1]), g(measured[v]))
    return tbl


def _ends(trace: Any, source: str) -> str:
    stds = [getattr(r, source).std for r in trace.layers if r.weight_layer and getattr(r, source) is not None]
    return f"{stds[0]:.2g} -> {stds[-1]:.2g}" if stds else "-"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _summary(textbook: Any, runs: tuple) -> tuple[str, str, str]:
    import numpy as np

    from initscope.report.rows import severity_counts

    s2s, width, depth = textbook.variances, textbook.settings["width"], textbook.settings["depth"]
    last = textbook.theory_forward[:, -1]
    good = min(range(len(s2s)), key=lambda v: abs(math.log(width * s2s[v] / 2)))
    with np.errstate(divide="ignore"):
        seen = float(np.exp(np.log(textbook.forward[good, :, -1]).mean()))
    band = textbook.band_forward[good] if good < len(textbook.band_forward) else None
    inside = ", inside the 90% finite-width band" if band is not None and band.lower[-1] <= seen <= band.upper[-1] else ""
    line1 = (f"Textbook net, {depth} ReLU layers: Var[f_{depth}] = {last.min():.2g} .. {last.max():.2g} for s2 = "
             f"{min(s2s):g} .. {max(s2s):g}; s2 = 2/D_h = {s2s[good]:g} holds it at {last[good]:.2g} in theory "
             f"(measured {seen:.2g}{inside}).")
    base = runs[0].trace.findings
    kinds = ", ".join(dict.fromkeys(f.kind.replace("_", " ") for f in base if f.severity != "info")) or "none"
    line2 = (f"CNN, {runs[0].label} init: {_count(severity_counts(base)['warning'], 'warning')} ({kinds}); "
             f"gradient std {_ends(runs[0].trace, 'backward')} from the first to the last layer.")
    parts = [f"{r.label}: {_count(severity_counts(r.trace.findings)['warning'], 'warning')}, forward std "
             f"{_ends(r.trace, 'forward')}" for r in runs[1:]]
    return line1, line2, "; ".join(parts) + "."


def _compare_table(runs: tuple) -> Any:
    from initscope.report.rows import severity_counts
    from initscope.report.text import table

    tbl = table(None, [("init", "left"), ("forward std", "left"), ("gradient std", "left"), ("warnings", "right"),
                       ("notes", "right")])
    for r in runs:
        c = severity_counts(r.trace.findings)
        tbl.add_row(r.label, _ends(r.trace, "forward"), _ends(r.trace, "backward"), str(c["warning"] + c["error"]),
                    str(c["info"]))
    return tbl


def _print_runs(con: Any, runs: tuple) -> None:
    from rich.padding import Padding

    from initscope.report.text import findings_block

    con.print(Padding(_compare_table(runs), (1, 0, 0, 3)))
    con.print(Padding("std at the first -> last weight layer; gradients with respect to each layer's output.",
                      (0, 0, 0, 3)))
    for r in runs:
        con.print(Padding(findings_block(r.trace.findings, title=f"Findings under {r.label} init"), (1, 0, 0, 3)))


def demo(out_dir: str | os.PathLike = "initscope-report", *, budget: str = "full", con: Any = None,
         progress: bool | None = None) -> DemoResult:
    """Run the tour, print it to ``con``, write the report into ``out_dir``; return what was made.

    Args:
        out_dir: where ``index.html``, ``udl.png`` and ``cnn.png`` go (created).
        budget: "full" (what ``make demo`` runs) or "ci" (a smaller CNN and batch, for tests).
        con: a rich Console (:func:`initscope.report.text.console`); default stdout.
        progress: show a progress bar; None: only on an interactive terminal outside CI.

    Raises:
        UnknownOptionError: an unknown budget.
    """
    if budget not in BUDGETS:
        raise UnknownOptionError(choices_message("budget", budget, BUDGETS, "pass one of these"))
    from rich.padding import Padding

    from initscope.experiments.udl import udl
    from initscope.report.html import report_html, write_report
    from initscope.report.plots import runs_figure, save_png
    from initscope.report.text import console, progress as bar

    con = con or console()
    start, b, out = time.perf_counter(), BUDGETS[budget], Path(out_dir)
    kwargs, batch, size = b[2], b[3], b[4]
    cnn = f"plain_cnn ({kwargs['depth']} conv layers, {kwargs['channels']}+ channels, {batch} images of {size}x{size})"
    with _one_thread(), bar(con, 6, "textbook experiment: 50 layers", progress) as advance:
        textbook = udl(seeds=b[0], batch=b[1])
        con.print(f"1. The textbook experiment (Prince, Understanding Deep Learning, fig. 7.7): {textbook.settings['depth']} "
                  f"ReLU layers of width D_h = {textbook.settings['width']}, weights N(0, s2), zero biases. "
                  "Var[f'] = D_h s2 Var[f] / 2, so every layer multiplies the variance by D_h s2 / 2.")
        con.print(Padding(_textbook_table(textbook), (1, 0, 0, 3)))
        runs = []
        for label, init in INITS:
            advance(f"probing the CNN under {label} init")
            runs.append(_probe_cnn(init, b))
        con.print(f"\n2. A {cnn}, least-squares loss against 0, probed under three inits:")
        _print_runs(con, tuple(runs))
        advance("drawing the PNGs")
        pngs = (textbook.save(out, formats=("png",))[0], save_png(runs_figure(runs, cnn), out / "cnn.png"))
        advance("writing the HTML report")
        summary = _summary(textbook, tuple(runs))
        page = report_html("initscope: what happens inside a network at init", runs, experiments=[textbook],
                           summary=summary, subtitle="The textbook's 50-layer experiment beside theory, then a "
                           "plain CNN probed under three inits.", runs_heading=f"A CNN under three inits: {cnn}",
                           runs_lead="One forward and backward pass on the same batch, least-squares loss against 0. "
                           "Click a name to hide or show it; hover a point for its layer and value.")
        path = write_report(out / "index.html", page)
    con.print(f"\nReport: {path} (with udl.png and cnn.png)", soft_wrap=True)  # one line, to copy
    for i, line in enumerate(summary, 1):
        con.print(f"  {i}. {line}", soft_wrap=True)
    return DemoResult(path, pngs, summary, textbook, tuple(runs), time.perf_counter() - start)
