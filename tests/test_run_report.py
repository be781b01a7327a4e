"""The HTML report of a run: findings on synthetic runs with known answers, the size and
opening time of a long run, and the page in real Chromium (as tests/test_browser.py does)."""
import os

import numpy as np
import pytest

from initscope.report.png import png_size
from initscope.report.text import in_ci
from initscope.runs import STAT_COLUMNS, Run
from initscope.runs.findings import RunThresholds, run_findings

CHROMIUM = "/usr/bin/chromium"


def synthetic(steps=1000, layers=50, every=10, seed=0, edit=None):
    """A run of ``steps`` recorded steps x ``layers`` layers (forward, backward, grad): std 1, mean
    0.1, nothing dead or underflowing, histograms around 2^0; ``edit(values, step, layer, phase)``
    changes the table in place before the Run is made."""
    rng = np.random.default_rng(seed)
    keys = [(s, f"block{i}.fc", ph) for s in range(0, steps * every, every) for ph in ("forward", "backward", "grad")
            for i in range(layers)]
    n = len(keys)
    step = np.array([k[0] for k in keys], np.int64)
    layer, phase = np.empty(n, object), np.empty(n, object)
    layer[:], phase[:] = [k[1] for k in keys], [k[2] for k in keys]
    values = np.zeros((n, len(STAT_COLUMNS)))
    values[:, STAT_COLUMNS.index("std")] = np.exp(rng.normal(0, 0.05, n))
    values[:, STAT_COLUMNS.index("mean")] = 0.1
    for c in ("min", "max", "saturation_frac", "fp16_overflow", "bf16_overflow"):
        values[:, STAT_COLUMNS.index(c)] = np.nan
    if edit is not None:
        edit(values, step, layer, phase)
    fb = phase != "grad"
    spans = tuple(rng.poisson(300, 12).astype(np.int64) if f else np.zeros(0, np.int64) for f in fb)
    return Run({"model": "Synthetic", "initscope": "test", "torch": "test", "layers": []}, step, layer, phase,
               np.full(n, 4096, np.int64), values, np.where(fb, 122, -1).astype(np.int16), spans)


def _set(values, rows, stat, v):
    values[rows, STAT_COLUMNS.index(stat)] = v


def test_dead_growth_underflow_and_nonfinite_are_found_where_they_began():
    def edit(values, step, layer, phase):
        _set(values, (layer == "block7.fc") & (phase == "forward") & (step >= 1200), "zero_frac", 0.97)
        _set(values, (layer == "block7.fc") & (phase == "forward") & (step == 600), "zero_frac", 0.95)  # recovers
        grows = (layer == "block3.fc") & (phase == "grad")
        _set(values, grows & (step >= 2000), "std", 40.0)
        _set(values, grows & (step >= 2000), "mean", 0.0)
        _set(values, grows & (step < 2000), "mean", 0.0)
        _set(values, grows & (step < 2000), "std", 1.0)
        _set(values, (layer == "block12.fc") & (phase == "grad") & (step >= 800), "fp16_underflow", 0.3)
        _set(values, (layer == "block20.fc") & (phase == "backward") & (step == 4500), "nonfinite", 3)

    run = synthetic(steps=1000, layers=30, edit=edit)
    found = {(f.kind, f.layer): f.message for f in run.findings}
    assert found["dead_trend", "block7.fc"] == ("layer `block7.fc`'s activations went dead at step 1200 and stayed "
                                                "dead: 97% of its units or values zero at step 9990")
    # std 1 -> 40 with mean 0: the norm sqrt(count * (std^2 + mean^2)) grows exactly 40x, between
    # the last step before 2000 and step 2000 (the window's largest change)
    assert found["signal_trend", "block3.fc"] == ("gradient norm of `block3.fc` grew 40x in 10 steps "
                                                  "(step 1990 to step 2000)")
    assert found["fp16_underflow", "block12.fc"] == "fp16 would underflow 30% or more of `block12.fc`'s gradients " \
                                                    "from step 800"
    assert found["nonfinite", "block20.fc"] == ("non-finite values first appear at step 4500, in the output "
                                                "gradients of `block20.fc`")
    assert len(found) == 4  # the healthy layers (std within 5% noise) give nothing
    kinds = [f.kind for f in run.findings]
    assert kinds == ["dead_trend", "nonfinite", "fp16_underflow", "signal_trend"]  # errors first, then by start step


def test_alike_findings_of_many_layers_are_said_once():
    def edit(values, step, layer, phase):
        many = np.isin(layer, [f"block{i}.fc" for i in range(12)]) & (phase == "grad")
        _set(values, many & (step >= 800), "fp16_underflow", 0.3)
        _set(values, (layer == "block20.fc") & (phase == "grad") & (step >= 900), "fp16_underflow", 0.5)  # later
        _set(values, np.isin(layer, ["block5.fc", "block6.fc"]) & (phase == "forward") & (step >= 1200),
             "zero_frac", 0.97)  # two alike: fewer than GROUP, each said on its own

    findings = synthetic(steps=200, layers=30, edit=edit).findings
    assert [(f.kind, f.layer, f.message) for f in findings] == [
        ("dead_trend", "block5.fc", "layer `block5.fc`'s activations went dead at step 1200 and stayed dead: "
                                    "97% of its units or values zero at step 1990"),
        ("dead_trend", "block6.fc", "layer `block6.fc`'s activations went dead at step 1200 and stayed dead: "
                                    "97% of its units or values zero at step 1990"),
        ("fp16_underflow", "block0.fc", "fp16 would underflow 30% or more of `block0.fc`'s gradients from step 800, "
                                        "and likewise for `block1.fc`, `block2.fc`, `block3.fc` and 8 more"),
        ("fp16_underflow", "block20.fc", "fp16 would underflow 50% or more of `block20.fc`'s gradients from step 900")]


def test_a_short_spike_is_not_a_state_and_thresholds_apply():
    def edit(values, step, layer, phase):
        _set(values, (layer == "block1.fc") & (phase == "forward") & (step >= 80), "zero_frac", 0.95)

    run = synthetic(steps=10, layers=3, edit=edit)  # dead only at steps 80 and 90: 2 recorded steps
    assert run_findings(run) == []
    assert [f.kind for f in run_findings(run, RunThresholds(persist=2))] == ["dead_trend"]


def test_a_long_run_stays_small():
    run = synthetic()
    assert len(run.steps) == 1000 and len(run.layers("forward")) == 50
    page = run.report()
    assert len(page.encode()) < 5_000_000  # the build and opening times: benchmarks/run_report_open.py
    assert page.count("<img") == 100 and page.count('<figure class="chart">') == 7


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        reason = "chromium is not installed at /usr/bin/chromium"
        pytest.fail(reason) if in_ci() else pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_the_long_run_report_opens_in_chromium(browser, tmp_path):
    path = tmp_path / "run.html"
    synthetic().report(path)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    assert errors == [] and requests == [path.as_uri()]  # nothing fetched (opening time: the benchmark)
    charts = page.locator("#steps figure.chart svg")
    assert charts.count() == 7
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box["width"] > 300 and box["height"] > 100
        assert charts.nth(i).locator("path.ln").count() >= 50  # a line per layer
    images = page.locator(".heat img")
    sizes = images.evaluate_all("xs => xs.map(x => [x.complete, x.naturalWidth, x.naturalHeight])")
    assert len(sizes) == 100 and all(ok and w == 240 and h > 0 for ok, w, h in sizes)  # thinned to 240 steps
    src = images.first.get_attribute("src")
    import base64

    assert png_size(base64.b64decode(src.split(",", 1)[1]))[0] == 240
    page.close()
