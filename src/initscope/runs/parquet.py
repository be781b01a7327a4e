"""The run file: a directory of Parquet parts, one part per flush.

Why Parquet (through pyarrow): a run is a long table of numbers (one row per step, layer and
phase), which is what a columnar format is built for: columns compress well (zeros of
histograms, repeated layer names as dictionaries), pandas, polars, DuckDB and Spark read it
without initscope, and the schema travels with the data. Why a directory of parts: a Parquet
file is only readable once its footer is written, so appending to one file while training
would lose everything on a crash. Each flush instead writes one complete part,
``part-000000.parquet``, ... (the layout Spark and pyarrow datasets use), first under a
temporary name and then renamed, so a crash loses at most the flush that was being written.

Every part carries the run's summary (model layers and parameters, initscope and torch
versions, ``every``) as JSON in its schema metadata under ``initscope.run``; the newest part's
is the run's. A part that cannot be read (truncated, corrupt, or from another program) stops
the load with a :class:`~initscope.errors.RunFileError` naming the part and the last step
read intact before it: there is no silent partial load.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from initscope.errors import ArgumentError, RunFileError
from initscope.runs._deps import require
from initscope.runs.run import STAT_COLUMNS, Run

__all__ = ["write_run", "write_part", "read_run", "parts", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_KEY = b"initscope.run"


def parts(path: str | os.PathLike) -> list[Path]:
    """The parts of a run directory, in order (temporary files of an unfinished flush left out)."""
    return sorted(Path(path).glob("part-*.parquet"))


def write_run(path: str | os.PathLike, run: Run) -> Path:
    """Write ``run`` as a new run directory holding one part.

    Raises:
        ArgumentError: ``path`` exists and is not an empty directory (a run is never overwritten).
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ArgumentError(f"run file {str(path)!r} already exists; pass a new path or delete it first")
    write_part(path, 0, run)
    return path


def write_part(directory: str | os.PathLike, index: int, run: Run) -> Path:
    """Write part number ``index`` of a run directory atomically (temporary name, then rename)."""
    pa, pq = require("pyarrow", "run files"), require("pyarrow.parquet", "run files")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in run.hist], dtype=np.int64)])
    flat = np.concatenate(run.hist) if run.hist else np.zeros(0, np.int64)
    hist = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat, pa.int64()))
    cols = {"step": pa.array(run.step, pa.int64()),
            "layer": pa.array(run.layer.tolist(), pa.string()).dictionary_encode(),
            "phase": pa.array(run.phase.tolist(), pa.string()).dictionary_encode(),
            "count": pa.array(run.count, pa.int64()),
            **{name: pa.array(run.values[:, j], pa.float64()) for j, name in enumerate(STAT_COLUMNS)},
            "hist_start": pa.array(run.hist_start, pa.int16()), "hist": hist}
    meta = {"format": FORMAT_VERSION, "stats": list(STAT_COLUMNS), **run.summary}
    table = pa.table(cols).replace_schema_metadata({_KEY: json.dumps(meta).encode()})
    final = directory / f"part-{index:06d}.parquet"
    tmp = final.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, final)
    return final


def read_run(path: str | os.PathLike) -> Run:
    """Read every part of a run directory (or a single part file).

    Raises:
        RunFileError: the path is missing or holds no part, or a part is unreadable; the
            error names the part and the last step read intact before it.
    """
    path = Path(path)
    files = [path] if path.is_file() else parts(path)
    if not files:
        what = "does not exist" if not path.exists() else "holds no part-*.parquet file"
        raise RunFileError(f"run file {str(path)!r} {what}; write one with Recorder.save(path) or a RunWriter sink",
                           path)
    runs: list[Run] = []
    for f in files:
        last = int(runs[-1].step[-1]) if runs and len(runs[-1].step) else None
        runs.append(_read_part(f, last))
    return Run.concat(runs)


def _read_part(f: Path, last: int | None) -> Run:
    pq = require("pyarrow.parquet", "run files")
    try:
        table = pq.read_table(f)
        meta = json.loads((table.schema.metadata or {})[_KEY])
        run = _from_table(table, meta)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        good = "no step was read before it" if last is None else f"the last good step is {last}"
        raise RunFileError(f"run file part {str(f)!r} is truncated or corrupt ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]}); {good}; move this part away to load the steps "
                           "before it", f, last) from e
    if last is not None and len(run.step) and run.step[0] <= last:
        raise RunFileError(f"run file part {str(f)!r} starts at step {run.step[0]}, not after the previous part's "
                           f"last step {last}: parts of two runs are mixed in one directory", f, last)
    return run


def _from_table(table, meta: dict) -> Run:
    if meta.get("format") != FORMAT_VERSION or meta.get("stats") != list(STAT_COLUMNS):
        raise ValueError(f"format {meta.get('format')} with statistics {meta.get('stats')}, expected format "
                         f"{FORMAT_VERSION}")
    col = lambda name: table.column(name).to_numpy()  # noqa: E731
    hist = table.column("hist").combine_chunks()
    offsets, flat = hist.offsets.to_numpy(), hist.flatten().to_numpy()
    offsets = offsets - offsets[0]
    spans = tuple(flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1))
    text = lambda name: np.array(table.column(name).cast("string").to_pylist(), object)  # noqa: E731
    summary = {k: v for k, v in meta.items() if k not in ("format", "stats")}
    values = np.stack([col(n).astype(np.float64) for n in STAT_COLUMNS], axis=1) if table.num_rows else \
        np.zeros((0, len(STAT_COLUMNS)))
    return Run(summary, col("step").astype(np.int64), text("layer"), text("phase"), col("count").astype(np.int64),
               values, col("hist_start").astype(np.int16), spans)
