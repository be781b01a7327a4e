"""The demo's HTML report in a real browser: Debian's chromium, driven by Playwright for Python.

The report is the one ``initscope demo`` writes, built on the reduced ``ci`` budget. The
browser is launched once for the module. Without chromium (and no way to install it with
apt) or without playwright the tests skip with the reason; under ``CI=true`` they fail
instead, because CI must run them. A screenshot goes to ``test-artifacts/``.
"""
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from initscope.probe import probe
from initscope.report.demo import demo
from initscope.report.html import Run, report_html, write_report
from initscope.report.rows import METRICS, metric_points
from initscope.report.svg import fmt
from initscope.report.text import console, in_ci

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _unavailable(reason):
    if in_ci():
        pytest.fail(f"{reason}; with CI=true the browser test must run")
    pytest.skip(reason)


def _install_chromium():
    """None when /usr/bin/chromium exists (installing it with apt if missing), else the reason."""
    if os.path.exists(CHROMIUM):
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "chromium is not installed and apt-get as root is not available to install it"
    try:
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True, check=True,
                       capture_output=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as e:
        return f"apt-get could not install chromium: {e}"
    return None if os.path.exists(CHROMIUM) else "apt-get ran but /usr/bin/chromium is still missing"


@pytest.fixture(scope="module")
def browser():
    reason = _install_chromium()
    if reason:
        _unavailable(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return demo(out / "initscope-report", budget="ci", con=console(io.StringIO(), width=100, color=False),
                progress=False)


class Page:
    """A loaded page with what it logged and requested."""

    def __init__(self, browser, url):
        self.errors, self.requests, self.dialogs = [], [], []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(url)
        self.page.wait_for_load_state("load")


@pytest.fixture
def page(browser, made):
    p = Page(browser, made.path.resolve().as_uri())
    yield p
    p.page.close()


def test_no_console_errors_and_nothing_fetched(page, made):
    assert page.errors == []
    assert page.requests == [made.path.resolve().as_uri()]  # the file itself; no network, no other file


def test_every_plot_rendered(page, made):
    charts = page.page.locator("figure.chart svg")
    assert charts.count() == 2 + len(METRICS)  # the textbook's two, then four per-layer plots
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box["width"] > 300 and box["height"] > 100
    textbook = made.textbook
    n_udl = len(textbook.variances) * textbook.forward.shape[-1]
    counts = [charts.nth(i).locator("circle.pt").count() for i in range(charts.count())]
    lines = [charts.nth(i).locator("path.ln").count() for i in range(charts.count())]
    assert counts[:2] == [n_udl, n_udl] and lines[:2] == [2 * len(textbook.variances)] * 2  # measured + theory
    for i, metric in enumerate(METRICS, start=2):
        expected = sum(1 for run in made.runs for pts in metric_points(run.trace, metric) for _, y, _ in pts
                       if y is not None)
        assert counts[i] == expected > 0, metric


def test_hover_shows_the_layer_and_its_value(page, made):
    run = made.runs[0]
    x, value, tip = metric_points(run.trace, "std")[0][2]  # the third weight layer under PyTorch's default init
    chart = page.page.locator("figure.chart").filter(has_text="Forward std")
    point = chart.locator('circle.pt[data-k="run0"]').nth(2)
    point.hover()
    shown = page.page.locator("#is-tip")
    assert shown.is_visible()
    assert shown.inner_text() == f"{run.label} · {tip}: {fmt(value)}"
    page.page.mouse.move(5, 5)
    assert not shown.is_visible()


def test_sort_orders_the_layer_table(page):
    table = page.page.locator(".panel.on table.layers")
    header = table.locator("th", has_text="grad std").first
    column = table.locator("th").all_inner_texts().index(header.inner_text())

    def values():
        cells = table.locator(f"tbody tr td:nth-child({column + 1})")
        return [float(v) for v in cells.evaluate_all("cs => cs.map(c => c.dataset.v)") if v]

    before = values()
    header.click()
    assert values() == sorted(before) and header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert values() == sorted(before, reverse=True) and header.get_attribute("aria-sort") == "descending"


def test_toggles_hide_and_show_a_run_in_every_plot(page, made):
    button = page.page.locator("button.tog", has_text=made.runs[1].label)
    points = page.page.locator('#runs circle.pt[data-k="run1"]')
    total = points.count()
    assert total > 0 and page.page.locator('#runs circle.pt[data-k="run1"]:visible').count() == total
    button.click()
    assert page.page.locator('#runs circle.pt[data-k="run1"]:visible').count() == 0
    assert page.page.locator('#runs circle.pt[data-k="run0"]:visible').count() > 0
    assert button.get_attribute("aria-pressed") == "false"
    button.click()
    assert page.page.locator('#runs circle.pt[data-k="run1"]:visible').count() == total


def test_weight_variance_toggle_in_the_textbook_plots(page, made):
    key = f"s2={made.textbook.variances[0]:g}"
    page.page.locator(f'button.tog[data-k="{key}"]').click()
    assert page.page.locator(f'circle.pt[data-k="{key}"]:visible').count() == 0
    assert page.page.locator(f'path.ln[data-k="{key}"]:visible').count() == 0


def test_tabs_show_one_run_at_a_time(page, made):
    panels = page.page.locator(".runs > .panel")
    assert [panels.nth(i).is_visible() for i in range(panels.count())] == [True, False, False]
    page.page.locator(".tabs button", has_text=made.runs[2].label).click()
    assert [panels.nth(i).is_visible() for i in range(panels.count())] == [False, False, True]
    assert page.page.locator(".panel.on").get_by_text("LSUV (").count() == 1  # its LSUV table


def test_screenshot(page, made):
    ARTIFACTS.mkdir(exist_ok=True)
    page.page.screenshot(path=ARTIFACTS / "report.png", full_page=True)
    page.page.locator("figure.chart").filter(has_text="Forward std").locator("circle.pt").nth(4).hover()
    page.page.screenshot(path=ARTIFACTS / "report-hover.png")
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000 and page.errors == []


def test_a_hostile_module_name_stays_text(browser, tmp_path):
    net = nn.Sequential()
    net.add_module("<script>alert(1)</script>", nn.Linear(4, 4))
    net.add_module("relu", nn.ReLU())
    path = write_report(tmp_path / "x.html", report_html("<img src=x onerror=alert(2)>",
                                                          [Run("<b>run</b>", probe(net, torch.randn(32, 4)))]))
    p = Page(browser, path.as_uri())
    assert p.dialogs == [] and p.errors == []
    assert p.page.locator("table.layers td", has_text="<script>alert(1)</script>").count() == 1
    assert p.page.locator("h1").inner_text() == "<img src=x onerror=alert(2)>"
    p.page.close()


def test_without_chromium_the_tests_skip_with_the_reason_but_fail_in_ci(monkeypatch):
    monkeypatch.setitem(globals(), "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no apt-get: nothing is installed here
    reason = _install_chromium()
    assert reason == "chromium is not installed and apt-get as root is not available to install it"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get as root"):
        _unavailable(reason)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="with CI=true the browser test must run"):
        _unavailable(reason)
