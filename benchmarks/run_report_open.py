"""The HTML report of a long run: its size, the time to build it, and the time Chromium takes
to open it (issue 14: a run of 1000 recorded steps x 50 layers stays under 5 MB and opens in
under 2 s). The run is the synthetic one of tests/test_run_report.py (forward, backward and
gradient rows for every layer and step, a histogram for each forward and backward row).

Run: ``.venv/bin/python benchmarks/run_report_open.py [--repeats 3]`` (needs Debian's chromium
at /usr/bin/chromium and the playwright package; no browser download).
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from test_run_report import CHROMIUM, synthetic  # noqa: E402  (the same run the test builds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run = synthetic()
    builds, opens = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "run.html"
        for _ in range(args.repeats):
            t = time.perf_counter()
            run.report(path)
            builds.append(time.perf_counter() - t)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            for _ in range(args.repeats):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(path.as_uri())
                page.wait_for_load_state("load")
                opens.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
                page.close()
            browser.close()
        size = path.stat().st_size
    print(f"run: {len(run.steps)} recorded steps x {len(run.layers('forward'))} layers")
    print(f"page size: {size / 1e6:.2f} MB (target < 5 MB)")
    print(f"build: median {statistics.median(builds):.2f} s of {args.repeats}")
    print(f"open in chromium (load event): median {statistics.median(opens):.2f} s of {args.repeats} (target < 2 s)")


if __name__ == "__main__":
    main()
