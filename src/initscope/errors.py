"""Typed errors. Every initscope error derives from :class:`InitscopeError`.

Messages name the argument or layer, the value, the valid choices and the fix.
Where a built-in exception type fits, the error subclasses it as well, so
``except ValueError`` keeps working for callers who do not know initscope.
"""
from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "InitscopeError",
    "RunFileError",
    "MissingDependencyError",
    "UnknownActivationError",
    "ActivationError",
    "UnknownOptionError",
    "ArgumentError",
    "ArgumentTypeError",
    "ShapeError",
    "LayerError",
    "ModelError",
    "ForwardError",
    "LossError",
    "DiscoveryWarning",
    "DistributedError",
]


class InitscopeError(Exception):
    """Base class of every error raised by initscope."""


class UnknownActivationError(InitscopeError, ValueError):
    """An activation given by a name that initscope does not know."""


class ActivationError(InitscopeError, ValueError):
    """A callable activation that cannot be integrated (NaN, shape change, no derivative)."""


class UnknownOptionError(InitscopeError, ValueError):
    """A mode, distribution, scheme or other option string that does not exist."""


class ArgumentError(InitscopeError, ValueError):
    """A numeric argument outside its valid range (a negative variance, a zero width, ...)."""


class ArgumentTypeError(InitscopeError, TypeError):
    """An argument of the wrong type or dtype (a list where a tensor is needed, an integer tensor
    where a floating one is, a string where a number is)."""


class ShapeError(InitscopeError, ValueError):
    """A tensor whose shape does not suit the requested operation."""


class LayerError(InitscopeError, TypeError):
    """A layer that an operation cannot handle."""


class ModelError(InitscopeError, ValueError):
    """A model that an operation cannot handle as a whole (no parameters, no eligible layers)."""


class ForwardError(InitscopeError, RuntimeError):
    """The model raised during a forward or backward pass run by initscope.

    Attributes:
        layer: qualified name of the module that was running when it failed, or None.
        completed: qualified names of the modules that finished before the failure.
    """

    def __init__(self, message: str, layer: str | None = None, completed: Iterable[str] = ()):
        super().__init__(message)
        self.layer = layer
        self.completed = list(completed)


class LossError(InitscopeError, ValueError):
    """A loss function or target that cannot be used (non-scalar loss, target without loss_fn)."""


# --- run files and optional integrations (issue 14) ---
class RunFileError(InitscopeError, ValueError):
    """A run file that cannot be read: truncated, corrupt, or not a run file.

    Attributes:
        path: the file (or part of a run directory) that failed.
        last_good_step: the last recorded step read intact before it, or None.
    """

    def __init__(self, message: str, path: object = None, last_good_step: int | None = None):
        super().__init__(message)
        self.path = path
        self.last_good_step = last_good_step


class MissingDependencyError(InitscopeError, ImportError):
    """An optional package that a feature needs is not installed; the message says how to install it."""


class DiscoveryWarning(UserWarning):
    """Activations were not observed in a run (no ``example_input``): they are assumed."""


def choices_message(what: str, value: object, known: Iterable[str], fix: str = "") -> str:
    """Format the standard 'unknown X' message: the value, the valid choices, the fix."""
    listed = ", ".join(repr(k) for k in known)
    text = f"unknown {what} {value!r}; known: {listed}"
    return f"{text}; {fix}" if fix else text


class DistributedError(InitscopeError, RuntimeError):
    """Ranks of a process group disagree or one of them failed: raised on every rank alike.

    Attributes:
        rank: the rank that raised or differs.
        name: the parameter or statistics key that differs, or None.
    """

    def __init__(self, message: str, rank: int | None = None, name: str | None = None):
        super().__init__(message)
        self.rank = rank
        self.name = name
