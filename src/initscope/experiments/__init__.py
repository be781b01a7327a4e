"""The source material's experiments, reproduced: each puts measurement beside theory.

Each experiment is a function with keyword-only knobs that returns a result holding the
raw arrays and the settings, with ``.plot()`` (a matplotlib Figure), ``.to_dict()``,
``.rows()``, ``.summary()``, ``.save(directory)`` and ``_repr_html_``:

- :func:`udl`: the textbook figure, variances through 50 ReLU layers, with theory and its
  finite-width band.
- :func:`he2015`: plain 22- and 30-layer ReLU nets trained from Xavier, Kaiming and
  PyTorch's default init (needs scikit-learn's digits: ``initscope[experiments]``).
- :func:`mean_shift`: mean and std of activation outputs for ReLU, ReLU - 0.5,
  GeneralRelu and LSUV, beside theory.
- :func:`low_precision`: fp16/bf16 underflow and overflow per layer across init scales.
- :func:`width`: a coordinate check of activation scale against width.

From the command line: ``initscope experiment NAME [--option ...] [--out DIR]``.

The functions share their modules' names, so ``initscope.experiments.udl`` is the
function; import a module's other names from it directly
(``from initscope.experiments.udl import UdlResult``).
"""
from __future__ import annotations

from initscope.experiments.base import Result
from initscope.experiments.he2015 import He2015Result, he2015
from initscope.experiments.low_precision import LowPrecisionResult, low_precision
from initscope.experiments.mean_shift import MeanShiftResult, mean_shift
from initscope.experiments.udl import UdlResult, udl
from initscope.experiments.width import WidthResult, width

__all__ = [
    "EXPERIMENTS", "Result",
    "udl", "UdlResult", "he2015", "He2015Result", "mean_shift", "MeanShiftResult",
    "low_precision", "LowPrecisionResult", "width", "WidthResult",
]

#: name -> experiment function, in the order the CLI lists them.
EXPERIMENTS = {"udl": udl, "he2015": he2015, "mean_shift": mean_shift, "low_precision": low_precision, "width": width}
