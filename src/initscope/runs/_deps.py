"""Optional packages, imported where they are used, with an error that says how to install them."""
from __future__ import annotations

import importlib
from types import ModuleType

from initscope.errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, feature: str, install: str = "pip install initscope[runs]") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``feature`` and the fix.

    Examples:
        >>> require("json", "reading").__name__
        'json'
        >>> require("no_such_module_xyz", "run files")
        Traceback (most recent call last):
        ...
        initscope.errors.MissingDependencyError: run files need the package 'no_such_module_xyz', which is not installed; install it with: pip install initscope[runs]
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{feature} need the package {module.split('.')[0]!r}, which is not "
                                     f"installed; install it with: {install}") from e
