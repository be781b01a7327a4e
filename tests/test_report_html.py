"""The HTML report without a browser: self-contained, escaped, one plot element per layer, the
embedded JSON, the explanations, the ``_repr_html_`` fragments, and golden files of a chart and
a layer table (regenerate with ``INITSCOPE_UPDATE_GOLDEN=1``)."""
import json
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from initscope import zoo
from initscope.diagnose import Finding
from initscope.experiments.udl import udl
from initscope.initialize import initialize
from initscope.lsuv import lsuv
from initscope.probe import probe
from initscope.report import Run, lsuv_html, plan_html, report_html, result_html, trace_html
from initscope.report.explain import explain, weight_factors
from initscope.report.html import data_json
from initscope.report.rows import METRICS, metric_points
from initscope.report.svg import Series, log_chart
from initscope.report.tables import layer_table

GOLDEN = Path(__file__).parent / "golden"
HOSTILE = "<script>alert(1)</script>"


def check_golden(name, text):
    path = GOLDEN / name
    if os.environ.get("INITSCOPE_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; create it with INITSCOPE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs; if intended, regenerate with INITSCOPE_UPDATE_GOLDEN=1"


@pytest.fixture(scope="module")
def runs():
    out = []
    for init in (None, "kaiming", "lsuv"):
        model, x = zoo.build("mlp", depth=6, width=32, batch=64)
        plan = initialize(model, "kaiming", example_input=x) if init == "kaiming" else None
        report = lsuv(model, x) if init == "lsuv" else None
        out.append(Run(init or "default", probe(model, x), plan, report))
    return out


@pytest.fixture(scope="module")
def page(runs):
    return report_html("three inits", runs, experiments=[udl(depth=6, width=16, batch=16)], summary=["a", "b", "c"])


def test_self_contained(page):
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert page.count("<style>") == 1 and page.count("<script>") == 1  # inlined CSS and JS


def test_one_point_per_layer_in_every_plot(page, runs):
    charts = re.findall(r'<figure class="chart">.*?</figure>', page)
    assert len(charts) == 2 + len(METRICS)
    for chart, metric in zip(charts[2:], METRICS):
        expected = sum(1 for r in runs for pts in metric_points(r.trace, metric) for _, y, _ in pts if y is not None)
        assert chart.count('class="pt') == expected > 0


def test_sections_findings_plan_and_lsuv(page, runs):
    assert page.count('class="panel') == 3 and page.count("<table class=layers>") == 3
    assert "InitPlan (" in page and "LSUV (" in page
    assert "Var[f\u2032] = D_h \u00b7 s2 \u00b7 Var[f] / 2" in page  # the textbook section's formula
    assert 'data-sort=num' in page and 'data-v="' in page


def test_embedded_json_is_strict_and_cannot_close_the_script(page, runs):
    body = re.search(r'<script type="application/json" id="initscope-data">(.*?)</script>', page, re.S).group(1)
    assert "</" not in body and "<" not in body
    data = json.loads(body)
    assert [r["label"] for r in data["runs"]] == ["default", "kaiming", "lsuv"]
    assert len(data["runs"][0]["trace"]["layers"]) == len(runs[0].trace.layers)
    assert data["experiments"][0]["name"] == "udl"
    assert json.loads(data_json({"x": "</script><!--", "y": float("nan")})) == {"x": "</script><!--", "y": None}


def test_every_model_string_is_escaped():
    odd = type(HOSTILE, (nn.Linear,), {})  # a class whose name is markup
    net = nn.Sequential()
    net.add_module(HOSTILE, odd(4, 4))
    net.add_module("relu", nn.ReLU())
    trace = probe(net, torch.randn(32, 4))
    finding = Finding("warning", HOSTILE, "dead_units", f"{HOSTILE} is dead; fix {HOSTILE}", f"fix {HOSTILE}")
    object.__setattr__(trace, "findings", [finding])  # a finding that quotes the name, as real ones do
    page = report_html(HOSTILE, [Run(HOSTILE, trace)], summary=[HOSTILE], subtitle=HOSTILE)
    for text in (page, trace_html(trace)):
        assert HOSTILE not in text and "<script>alert" not in text
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 8


def test_explanations_carry_the_derivation_and_this_models_numbers(runs):
    vanishing = next(f for f in runs[0].trace.findings if f.kind == "vanishing_forward")
    text = explain(vanishing, runs[0].trace)
    assert "Var[f'] = D_h s2 Var[f] / 2" in text and "He/Kaiming" in text
    fwd, bwd, n = weight_factors(runs[0].trace)
    assert n == 7 and f"= {fwd:.3g} (median over 7 weight matrices)" in text
    # PyTorch's default Linear init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)): s2 = 1/(3 fan_in), factor 1/6.
    assert fwd == pytest.approx(1 / 6, rel=0.1)  # 1024 weights each: the sample variance's rel. SE is ~4%
    fwd_k, _, _ = weight_factors(runs[1].trace)
    assert fwd_k == pytest.approx(1.0, rel=0.15)  # Kaiming: D_h s2 / 2 = 1 (the input layer has gain 1: 1/2)
    gradient = Finding("warning", None, "vanishing_gradient", "m", "s")
    assert "fan_out" in explain(gradient, runs[0].trace)


def test_repr_html_fragments(runs):
    run = runs[1]
    for fragment in (trace_html(run.trace), plan_html(run.plan), lsuv_html(runs[2].lsuv)):
        assert fragment.startswith('<div class="initscope"><style>') and fragment.endswith("</div>")
        assert "<script" not in fragment  # notebooks rarely run scripts: native tooltips, every panel shown
    assert run.plan._repr_html_() == plan_html(run.plan)
    assert trace_html(run.trace).count("<svg") == 4
    assert "<svg" in result_html(udl(depth=4, width=8, batch=8))


def test_chart_golden():
    series = [Series("a", "run <a>", "#d1495b", ((1, 1.0, "0 (Linear)"), (2, 0.1, "2 (Linear)"), (3, None, "4"),
                                                (4, 0.001, "6 (Linear)"))),
              Series("b", "theory", "#2e86ab", ((1, 1.0, ""), (4, 1e-3, "")), dash=True, markers=False,
                     band=((1, 0.5, 2.0), (4, 5e-4, 2e-3)))]
    check_golden("chart.svg.html", log_chart("std <per layer>", series, x_label="layer", y_label="std") + "\n")
    pct = log_chart("dead", [Series("a", "a", "#000", ((1, 0.0, "x"), (2, 50.0, "y")))], x_label="l",
                    y_label="%", unit="%", floor=0.1)
    assert 'class="pt zero"' in pct and "\u22640.1" in pct and "x: 0%" in pct


def test_layer_table_golden():
    # float64 throughout: float32 sums differ in the 7th digit between machines and thread
    # counts (seen on a 16-core host), and the table keeps 7 digits in its sort keys.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    check_golden("layer_table.html", layer_table(probe(net, torch.randn(64, 4, dtype=torch.float64))) + "\n")
