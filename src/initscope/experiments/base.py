"""What every experiment shares: the result base class, file output and the progress bar.

A result holds the raw arrays and the settings. It renders itself with ``plot()``
(a matplotlib ``Figure``, built without pyplot so no backend or global state is
touched), ``to_dict()`` (plain Python), ``rows()`` (long-format records for CSV),
``summary()`` (label/value lines) and ``_repr_html_`` for notebooks; ``save(dir)``
writes PNG, SVG, JSON and CSV. matplotlib and rich load inside the functions that
use them.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

import numpy as np

from initscope._render import html_of
from initscope.errors import ArgumentError

__all__ = ["Result", "ProgressLike", "progress_steps", "interactive", "figure", "jsonable", "FORMATS"]

#: A progress sink: None (silent), True (a rich bar when interactive) or ``f(done, total, label)``.
ProgressLike = Union[bool, Callable[[int, int, str], None], None]
FORMATS = ("png", "svg", "json", "csv")


def interactive(stream: Any = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal and CI is not set."""
    stream = sys.stderr if stream is None else stream
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return not ci and bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def progress_steps(progress: ProgressLike, total: int, label: str) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(text="")``, to be called once per finished step.

    ``progress`` may be a callable ``f(done, total, text)`` (tests inject one), True for a
    rich bar on stderr (only when interactive and not in CI; no animation otherwise), or
    None/False for silence.
    """
    if callable(progress):
        done = [0]

        def advance(text: str = "") -> None:
            done[0] += 1
            progress(done[0], total, text or label)
        yield advance
    elif progress and interactive():
        from rich.console import Console
        from rich.progress import Progress
        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda text="": bar.update(task, advance=1, description=text or label)
    else:
        yield lambda text="": None


def figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.4, 4.2)) -> tuple[Any, np.ndarray]:
    """A pyplot-free matplotlib Figure and its axes as a 2-D array."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    return fig, np.atleast_2d(np.asarray(fig.subplots(rows, cols, squeeze=False)))


def jsonable(value: Any) -> Any:
    """Arrays to lists, numpy scalars to Python, non-finite floats to None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def check_count(value: int, name: str, low: int = 1) -> int:
    """A whole number >= ``low``, or an ArgumentError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ArgumentError(f"{name} must be a whole number >= {low}; got {value!r}")
    return int(value)


def check_nonempty(values: Sequence, name: str) -> list:
    """A non-empty list (any sequence or iterable but a string), or an ArgumentError naming it."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or not list(values):
        raise ArgumentError(f"{name} must be a non-empty list; got {values!r}")
    return list(values)


def check_positive(values: Sequence[float], name: str) -> tuple[float, ...]:
    """A non-empty list of finite numbers > 0, or an ArgumentError naming it."""
    numbers = check_nonempty(values, name)
    out = tuple(float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else math.nan
                for v in numbers)
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise ArgumentError(f"{name} must be a non-empty list of finite numbers > 0; got {list(values)!r}")
    return out


class Result:
    """Base of every experiment's result: subclasses define the four renderers below."""

    name: str = "experiment"
    settings: dict

    def plot(self) -> Any:  # pragma: no cover - abstract
        """A matplotlib Figure."""
        raise NotImplementedError

    def to_dict(self) -> dict:  # pragma: no cover - abstract
        """Settings, raw arrays and summary numbers as plain Python."""
        raise NotImplementedError

    def rows(self) -> list[dict]:  # pragma: no cover - abstract
        """One record per measured number (long format), for CSV."""
        raise NotImplementedError

    def summary(self) -> list[tuple[str, str]]:  # pragma: no cover - abstract
        """Label/value lines: what the experiment shows, in numbers."""
        raise NotImplementedError

    def text(self) -> str:
        """The summary as aligned plain text."""
        lines = self.summary()
        width = max((len(k) for k, _ in lines), default=0)
        return "\n".join([f"{self.name}:"] + [f"  {k.ljust(width)}  {v}" for k, v in lines])

    def save(self, directory: str | os.PathLike, formats: Sequence[str] = FORMATS) -> list[Path]:
        """Write ``<name>.png/.svg/.json/.csv`` into ``directory`` (created); returns the paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        images = [f for f in formats if f in ("png", "svg")]
        if images:
            fig = self.plot()
            for fmt in images:
                paths.append(out / f"{self.name}.{fmt}")
                fig.savefig(paths[-1], dpi=120)
        if "json" in formats:
            paths.append(out / f"{self.name}.json")
            paths[-1].write_text(json.dumps(jsonable(self.to_dict()), indent=1, allow_nan=False) + "\n")
        if "csv" in formats:
            paths.append(out / f"{self.name}.csv")
            rows = self.rows()
            with paths[-1].open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["empty"])
                writer.writeheader()
                writer.writerows(rows)
        return paths

    def png(self) -> bytes:
        """The plot as PNG bytes."""
        buffer = io.BytesIO()
        self.plot().savefig(buffer, format="png", dpi=90)
        return buffer.getvalue()

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str | None:
        return html_of("experiment", self)
