"""``initscope probe`` and ``initscope init``: SPEC forms, inputs, inits, losses, outputs, exit
codes, and a one-line message (exit 2) for each kind of bad input."""
import io
import json
import sys
import textwrap

import pytest
import torch

from initscope.cli import main

HEALTHY = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return net, torch.randn(256, 32)

def model_only():
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1))

def broken():
    raise RuntimeError("no weights on this machine")

def not_a_model():
    return 42
"""


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err, width=120, color=False, tty=False)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(textwrap.dedent(HEALTHY))
    return path


def test_zoo_spec_prints_one_row_per_layer_then_findings():
    code, out, err = run("probe", "zoo:mlp?depth=3&width=16&batch=64")
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["layer", "type"])
    assert lines[head].split() == ["layer", "type", "shape", "mean", "std", "dead", "grad", "std", "flags"]
    rows = [line.split() for line in lines[head + 2:head + 9]]
    assert [r[:3] for r in rows] == [[str(i), t, "64x16" if i < 6 else "64x1"]
                                     for i, t in enumerate(["Linear", "ReLU"] * 3 + ["Linear"])]
    assert "Findings:" in out and "fix: " in out and code == 0 and err == ""


def test_fail_on_warning_exits_1_and_a_healthy_model_exits_0(factory):
    assert run("probe", "zoo:mlp?depth=10&width=32", "--fail-on", "warning")[0] == 1  # default init: vanishing
    assert run("probe", "zoo:mlp?depth=10&width=32")[0] == 0  # warnings do not reach the default level, error
    code, out, _ = run("probe", f"{factory}:make", "--init", "kaiming", "--fail-on", "warning")
    assert code == 0 and "WARNING" not in out


@pytest.mark.parametrize("init", ["none", "torch_default", "kaiming", "xavier", "lsuv"])
def test_every_init(factory, init):
    code, out, err = run("probe", f"{factory}:make", "--init", init, "--loss", "ce")
    assert code in (0, 1) and err == "" and f"init {init}" in out and ", ce, loss " in out


def test_module_spec_and_input_options(factory, tmp_path, monkeypatch):
    (tmp_path / "cli_probe_models.py").write_text(factory.read_text())
    monkeypatch.chdir(tmp_path)  # a package.module SPEC resolves from the working directory
    torch.save(torch.randn(20, 6), tmp_path / "x.pt")
    try:
        code, out, _ = run("probe", "cli_probe_models:model_only", "--input-shape", "8,6")
        assert code == 0 and "input 8x6 from --input-shape" in out
        code, out, _ = run("probe", "cli_probe_models:model_only", "--input", "x.pt")
        assert code == 0 and "20x1" in out
    finally:
        sys.modules.pop("cli_probe_models", None)


def test_html_and_json_outputs(factory, tmp_path):
    html, data = tmp_path / "out" / "r.html", tmp_path / "r.json"
    code, out, _ = run("probe", f"{factory}:make", "--init", "kaiming", "--html", str(html), "--json", str(data))
    assert code == 0 and f"HTML report: {html}" in out
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "InitPlan (" in page and page.count("<svg") == 4
    doc = json.loads(data.read_text())  # strict JSON: no NaN
    assert doc["init"] == "kaiming" and len(doc["trace"]["layers"]) == 5 and doc["plan"]["scheme"] == "kaiming"


def test_init_prints_the_plan_and_saves_weights(tmp_path):
    code, out, _ = run("init", "zoo:mlp?depth=2&width=8", "--scheme", "kaiming", "--save", str(tmp_path / "w.pt"))
    assert code == 0 and "InitPlan: scheme=kaiming" in out and "0.weight" in out and "fan_in" in out
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    assert set(state) == {f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert float(state["2.weight"].std()) == pytest.approx((2 / 8) ** 0.5, rel=0.35)  # 64 draws: std's rel. SE 9%
    code, out, _ = run("init", "zoo:mlp?depth=2&width=8", "--scheme", "lsuv")
    assert code == 0 and "LsuvReport" in out


def test_markup_in_a_module_name_prints_literally(tmp_path):
    path = tmp_path / "odd.py"
    path.write_text("import torch\nfrom torch import nn\n\ndef make():\n    net = nn.Sequential()\n"
                    "    net.add_module('[bold]x[/bold]', nn.Linear(3, 3))\n    return net, torch.randn(4, 3)\n")
    code, out, _ = run("probe", f"{path}:make")
    assert code == 0 and "[bold]x[/bold]" in out


def _bad(*argv):
    code, out, err = run(*argv)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("initscope: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("spec, words", [
    ("zoo:nope", "unknown zoo model 'nope'"),
    ("zoo:mlp?depth=0", "depth must be a whole number >= 1"),
    ("zoo:mlp?colour=red", "zoo:mlp takes depth, width"),
    ("no_colon_here", "does not resolve"),
    ("missing_file.py:make", "no file 'missing_file.py'"),
    ("no_such_module_xyz:make", "no module named 'no_such_module_xyz'"),
    ("json:nothing", "has no callable 'nothing'"),
])
def test_specs_that_do_not_resolve(spec, words):
    assert words in _bad("probe", spec)


def test_a_factory_that_raises_or_returns_no_model(factory):
    assert "raised RuntimeError: no weights on this machine" in _bad("probe", f"{factory}:broken")
    assert "returned int" in _bad("probe", f"{factory}:not_a_model")
    assert "gives no example input" in _bad("probe", f"{factory}:model_only")


def test_an_input_shape_the_model_rejects_names_the_layer(factory):
    err = _bad("probe", f"{factory}:make", "--input-shape", "8,5")
    assert "`0` (Linear) raised RuntimeError" in err and "the input was 8x5 from --input-shape" in err
    assert "positive whole numbers" in _bad("probe", f"{factory}:make", "--input-shape", "8,x")
    assert "cannot load it" in _bad("probe", f"{factory}:make", "--input", str(factory))


def test_unwritable_output_paths(factory, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for option in ("--html", "--json"):
        assert "not writable" in _bad("probe", f"{factory}:make", option, str(blocker / "x"))
    assert "is a directory" in _bad("probe", f"{factory}:make", "--json", str(tmp_path))
    assert "not writable" in _bad("init", f"{factory}:make", "--save", str(blocker / "w.pt"))


def test_debug_shows_the_traceback(factory):
    code, _, err = run("probe", f"{factory}:broken", "--debug")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("initscope: error:")
