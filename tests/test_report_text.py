"""Terminal rendering: golden files of the CLI's tables at a fixed width with colour off, and
the width, colour and TTY settings.

Regenerate the golden files after an intended change with
``INITSCOPE_UPDATE_GOLDEN=1 python -m pytest tests/test_report_text.py tests/test_report_html.py``
and review the diff. Numbers are deterministic: fixed seeds, CPU, one forward and backward.
"""
import io
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from initscope.cli import main
from initscope.diagnose import Finding
from initscope.probe import probe
from initscope.report.rows import layer_rows, split
from initscope.report.text import console, findings_block, g, layer_table, progress

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name, text):
    """Compare ``text`` (trailing spaces stripped per line) with tests/golden/NAME."""
    text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    path = GOLDEN / name
    if os.environ.get("INITSCOPE_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; create it with INITSCOPE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs; if intended, regenerate with INITSCOPE_UPDATE_GOLDEN=1"


def cli(*argv):
    out = io.StringIO()
    code = main(list(argv), out=out, width=100, color=False, tty=False)
    return code, out.getvalue()


def test_probe_output_golden():
    code, text = cli("probe", "zoo:mlp?depth=4&width=16&batch=64")
    assert code == 0
    check_golden("probe_mlp.txt", text)


def test_probe_kaiming_output_golden():
    code, text = cli("probe", "zoo:plain_cnn?depth=3&channels=4&size=8&batch=16", "--init", "kaiming", "--loss", "ce")
    assert code == 0
    check_golden("probe_cnn_kaiming.txt", text)


def test_init_plan_golden():
    code, text = cli("init", "zoo:resnet?depth=1&channels=4&size=8", "--scheme", "kaiming")
    assert code == 0
    check_golden("init_resnet.txt", text)


def render(renderable, **settings):
    buf = io.StringIO()
    console(buf, **{"width": 80, "color": False, **settings}).print(renderable)
    return buf.getvalue()


@pytest.fixture(scope="module")
def trace():
    torch.manual_seed(0)
    return probe(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)), torch.randn(64, 8))


def test_width_and_colour_are_injected(trace):
    narrow, wide = render(layer_table(trace), width=60), render(layer_table(trace), width=120)
    assert max(map(len, narrow.splitlines())) <= 60 < max(map(len, wide.splitlines()))
    assert "\x1b[" not in narrow
    warn = [Finding("warning", "0", "dead_units", "50% dead; fix it", "fix it")]
    assert "\x1b[" in render(findings_block(warn), color=True)


def test_rows_hold_every_layer_in_order(trace):
    rows = layer_rows(trace)
    assert [(r.label, r.type, r.shape) for r in rows] == [("0", "Linear", "64x8"), ("1", "ReLU", "64x8"),
                                                         ("2", "Linear", "64x1")]
    assert rows[1].zero_pct == pytest.approx(100 * trace.layers[1].forward.zero_frac)
    assert rows[0].grad_std == pytest.approx(trace.layers[0].backward.std)


def test_findings_read_as_seen_then_fix():
    f = Finding("warning", None, "vanishing_forward", "std falls 0.5x per layer; use kaiming", "use kaiming")
    assert split(f) == ("std falls 0.5x per layer", "use kaiming")
    text = render(findings_block([f]))
    assert text.splitlines()[:4] == ["Findings: 1 warning", "  WARNING  whole network: vanishing_forward",
                                     "    std falls 0.5x per layer", "    fix: use kaiming"]
    assert "healthy" in render(findings_block([]))


def test_progress_is_silent_without_a_terminal():
    buf = io.StringIO()
    con = console(buf, width=80, color=False, tty=False)
    with progress(con, 3, "working") as advance:
        advance("next")
    assert buf.getvalue() == ""


def test_number_cells():
    assert (g(None), g(float("nan")), g(1234567.0), g(0.5, ".0f", "%")) == ("-", "-", "1.23e+06", "0%")
