"""What people look at: terminal tables, plots, and the self-contained HTML report.

Renderers are pure functions of results (a :class:`~initscope.probe.Trace`, an
:class:`~initscope.initplan.InitPlan`, an :class:`~initscope.lsuv.LsuvReport`, experiment
results). rich and matplotlib load inside the functions that use them, so importing this
package costs nothing beyond torch and numpy.

- :mod:`~initscope.report.text`: rich tables for the terminal, with width, colour and TTY injectable.
- :mod:`~initscope.report.html`: the one-file HTML report and the ``_repr_html_`` fragments.
- :mod:`~initscope.report.plots`: matplotlib figures (PNG) of per-layer statistics.
- :mod:`~initscope.report.demo`: the guided tour that ``initscope demo`` runs.
- :mod:`~initscope.report.run`: the report of a recorded training run (``Run.report()``).

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from initscope.probe import probe
    >>> trace = probe(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)), torch.randn(32, 8))
    >>> page = report_html("my model", [Run("as built", trace)])  # write_report(path, page) saves it
    >>> page.startswith("<!DOCTYPE html>"), page.count("<svg")
    (True, 4)
"""
from __future__ import annotations

from initscope.report.demo import DemoResult, demo
from initscope.report.html import Run, lsuv_html, plan_html, report_html, result_html, trace_html, write_report
from initscope.report.run import run_page

__all__ = ["Run", "report_html", "write_report", "trace_html", "plan_html", "lsuv_html", "result_html", "demo",
           "DemoResult", "run_page"]
