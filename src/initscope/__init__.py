"""initscope: initialize networks correctly and see what happens inside them.

Only torch and numpy load at import time; report, plotting and CLI libraries load
inside the functions that use them.
"""
from __future__ import annotations

from initscope.errors import (
    ActivationError,
    ForwardError,
    InitscopeError,
    LayerError,
    LossError,
    ModelError,
    ShapeError,
    UnknownActivationError,
    UnknownOptionError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "InitscopeError",
    "UnknownActivationError",
    "ActivationError",
    "UnknownOptionError",
    "ShapeError",
    "LayerError",
    "ModelError",
    "ForwardError",
    "LossError",
]
