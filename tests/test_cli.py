"""The CLI's gain and demo commands, exit codes and messages."""
import io
import math
import subprocess
import sys

import pytest

from initscope.cli import main


def run(*argv):
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_gain_relu_prints_sqrt2_both_ways():
    code, text = run("gain", "relu")
    row = text.splitlines()[-1].split()
    assert code == 0 and row[0] == "relu"
    assert [float(v) for v in row[1:]] == pytest.approx(
        [1 / math.sqrt(2 * math.pi), 0.5, 0.5 - 1 / (2 * math.pi), 0.5, math.sqrt(2), math.sqrt(2), math.sqrt(2)],
        rel=1e-5)  # six significant digits are printed


def test_gain_param_and_q():
    code, text = run("gain", "leaky_relu", "--param", "0.2", "--q", "2")
    assert code == 0 and "q = 2" in text and "leaky_relu(0.2)" in text


def test_gain_without_torch_value_shows_dash():
    assert run("gain", "gelu")[1].splitlines()[-1].split()[-1] == "-"


def test_unknown_activation_exits_2_with_message(capsys):
    assert main(["gain", "swish2"]) == 2
    err = capsys.readouterr().err
    assert "unknown nonlinearity 'swish2'" in err and "known: relu" in err


def test_demo_lists_every_builtin():
    code, text = run("demo")
    assert code == 0 and all(name in text for name in ("relu", "gelu", "selu", "hardswish"))


def test_version_through_the_entry_point():
    proc = subprocess.run([sys.executable, "-m", "initscope.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("initscope 0.")


def test_import_loads_only_torch_and_numpy():
    code = ("import sys, initscope, initscope.init, initscope.layer, initscope.zoo; "
            "bad = [m for m in ('rich', 'matplotlib', 'scipy', 'playwright') if m in sys.modules]; print(bad)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stderr
