"""The CLI's gain, demo and experiment commands, exit codes, messages and the terminal settings.

``probe`` and ``init`` are tested in test_cli_probe.py.
"""
import io
import math
import subprocess
import sys

import pytest

from initscope.cli import main


def run(*argv, **terminal):
    out = io.StringIO()
    code = main(list(argv), out=out, **{"width": 100, "color": False, "tty": False, **terminal})
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


def test_demo_tells_the_story_and_writes_the_report(tmp_path):
    out = tmp_path / "report"
    code, text = run("demo", "--budget", "ci", "--out", str(out))
    assert code == 0
    assert "1. The textbook experiment" in text and "D_h s2 / 2" in text
    for label in ("PyTorch default", "Kaiming", "LSUV"):
        assert f"Findings under {label} init" in text
    assert f"Report: {out / 'index.html'}" in text
    summary = text.split("Report: ")[1].splitlines()[1:]
    assert [line.split(".")[0].strip() for line in summary] == ["1", "2", "3"]  # three lines
    assert {p.name for p in out.iterdir()} == {"index.html", "udl.png", "cnn.png"}
    assert "\x1b[" not in text and "\r" not in text  # no colour, no progress animation without a TTY


def test_demo_progress_bar_only_on_a_terminal_outside_ci(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    code, text = run("demo", "--budget", "ci", "--out", str(tmp_path), tty=True)
    assert code == 0 and "\x1b[?25l" in text  # rich hides the cursor while its bar animates
    monkeypatch.setenv("CI", "true")
    code, text = run("demo", "--budget", "ci", "--out", str(tmp_path), tty=True)
    assert code == 0 and "\x1b[?25l" not in text


def test_demo_into_an_unwritable_directory_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["demo", "--budget", "ci", "--out", str(blocker / "report")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not writable" in err and "Traceback" not in err


def test_experiment_subcommand_is_wired(tmp_path):
    code, text = run("experiment", "udl", "--depth", "3", "--width", "8", "--batch", "8", "--out", str(tmp_path))
    assert code == 0 and "per-layer factor" in text and (tmp_path / "udl.json").exists()


def test_usage_errors_exit_2(capsys):
    assert main(["probe"]) == 2
    assert main(["nonsense"]) == 2
    assert "usage: initscope" in capsys.readouterr().err


def test_help_documents_exit_codes(capsys):
    assert main(["--help"]) == 0
    assert "exit codes: 0 success, 1 probe findings" in capsys.readouterr().out
    assert main(["probe", "--help"]) == 0
    assert "Exit codes: 0 healthy, 1 findings at the --fail-on level, 2 bad usage" in capsys.readouterr().out


def test_version_through_the_entry_point():
    proc = subprocess.run([sys.executable, "-m", "initscope.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("initscope 0.")


def test_import_loads_only_torch_and_numpy():
    code = ("import sys, initscope, initscope.init, initscope.layer, initscope.zoo, initscope.report, initscope.cli; "
            "bad = [m for m in ('rich', 'matplotlib', 'scipy', 'playwright') if m in sys.modules]; print(bad)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stderr
