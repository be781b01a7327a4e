"""The direction of the layers: nothing below the report package imports it, not even lazily.

Every module of initscope except ``report/``, ``cli.py`` and the package ``__init__`` (the top,
which imports report so that it registers its renderers) is parsed, and every import
statement in it, at any depth, is checked. HTML reaches results through
:mod:`initscope._render`.
"""
import ast
from pathlib import Path

import torch
from torch import nn

import initscope
from initscope.probe import probe

SRC = Path(initscope.__file__).resolve().parent
ABOVE = {"cli.py", "__init__.py"}


def _below_report():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "report" or str(rel) in ABOVE:
            continue
        yield rel, ast.parse(path.read_text(encoding="utf-8"))


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            yield base
            if base == "initscope":
                yield from (f"initscope.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            yield from (a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))


def test_no_module_below_report_imports_it():
    checked, bad = [], []
    for rel, tree in _below_report():
        checked.append(str(rel))
        bad += [(str(rel), name) for name in _imports(tree) if name.split(".")[:2] == ["initscope", "report"]]
    assert bad == []
    for core in ("stats.py", "recorder.py", "trace.py", "initplan.py", "lsuv.py", "lsuv_report.py", "probe.py",
                 "experiments/base.py", "runs/run.py"):
        assert core in checked  # the walk reaches the core modules it is meant to guard


def test_the_walk_would_catch_a_lazy_import():
    tree = ast.parse("def f():\n    from initscope.report.html import trace_html\n")
    assert list(_imports(tree)) == ["initscope.report.html"]
    tree = ast.parse("def f():\n    from initscope import report\n")
    assert "initscope.report" in list(_imports(tree))


def test_repr_html_reaches_the_renderer_through_the_registry():
    trace = probe(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.randn(8, 4))
    page = trace._repr_html_()
    assert page.startswith('<div class="initscope">') and page.count("<svg") == 4


def test_import_initscope_loads_no_optional_package():
    import subprocess
    import sys

    code = ("import sys, initscope, initscope.runs, initscope.integrations; "
            "print(sorted(m for m in ('pyarrow', 'pandas', 'tensorboard', 'transformers', 'lightning', "
            "'matplotlib', 'rich') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(SRC.parent), "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
