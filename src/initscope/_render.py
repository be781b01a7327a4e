"""Where HTML renderers are found: a registry the core reads and :mod:`initscope.report` fills.

The core (probe, trace, recorder, initplan, lsuv, experiments, runs) sits below the report
package and never imports it, not even lazily. An object's ``_repr_html_`` asks this registry
for the renderer of its kind; :mod:`initscope.report` registers its renderers when it is
imported (``import initscope`` does that, last). With no renderer registered,
``_repr_html_`` returns None, and Jupyter shows the object's ``repr`` instead.

Examples:
    >>> register_html("example", lambda obj: f"<b>{obj}</b>")
    >>> html_of("example", 3)
    '<b>3</b>'
    >>> html_of("no such kind", 3) is None
    True
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["register_html", "html_of"]

_RENDERERS: dict[str, Callable[[Any], str]] = {}


def register_html(kind: str, renderer: Callable[[Any], str]) -> None:
    """Make ``renderer(obj)`` the HTML of every object of ``kind`` ("trace", "plan", ...)."""
    _RENDERERS[kind] = renderer


def html_of(kind: str, obj: Any) -> str | None:
    """The registered renderer's HTML for ``obj``, or None when none is registered."""
    renderer = _RENDERERS.get(kind)
    return None if renderer is None else renderer(obj)
