"""Trainer integrations: record a run with a few lines in the trainers people use.

- :class:`~initscope.integrations.huggingface.InitscopeCallback`: a transformers ``TrainerCallback``.
- :class:`~initscope.integrations.lightning.InitscopeLightningCallback`: a Lightning ``Callback``.

Both record every ``every`` optimizer steps (micro-batches of gradient accumulation merge
into their optimizer step), write a run file while training, and at the end the HTML report
of the run. The trainer libraries are optional: the names here load their module on first
use, and without the library raise :class:`~initscope.errors.MissingDependencyError` saying
what to install. ``import initscope`` never imports them.

Examples:
    >>> import initscope.integrations as integrations
    >>> sorted(integrations.__all__)
    ['InitscopeCallback', 'InitscopeLightningCallback', 'RunSession']
"""
from __future__ import annotations

import importlib
from typing import Any

from initscope.integrations.session import RunSession

__all__ = ["InitscopeCallback", "InitscopeLightningCallback", "RunSession"]

_LAZY = {"InitscopeCallback": "huggingface", "InitscopeLightningCallback": "lightning"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"initscope.integrations.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'initscope.integrations' has no attribute {name!r}")
