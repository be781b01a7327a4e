"""A small PNG encoder for heatmaps: 8-bit palette images, written with zlib alone.

Why not matplotlib: a report of a long run holds a hundred heatmaps, and a palette PNG of
one byte per pixel, compressed, is a few kilobytes each, made in microseconds, with no
plotting library loaded. The colours are a perceptual ramp from light to dark (close to
matplotlib's "magma" reversed), so more counts read as darker ink.

Examples:
    >>> data = heatmap_png(np.array([[0.0, 0.5], [1.0, 0.25]]))
    >>> data[:8] == b"\\x89PNG\\r\\n\\x1a\\n", png_size(data)
    (True, (2, 2))
"""
from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

__all__ = ["heatmap_png", "png_size", "data_uri", "RAMP"]

#: Stops of the colour ramp, from 0 (no counts) to 1 (the image's largest count).
RAMP = ((1.0, (255, 255, 255)), (0.0, (252, 253, 191)), (0.25, (254, 159, 109)), (0.5, (222, 73, 104)),
        (0.75, (140, 41, 129)), (1.0, (0, 0, 4)))


def _palette() -> bytes:
    stops = RAMP[1:]
    xs = np.array([s for s, _ in stops])
    cols = np.array([c for _, c in stops], np.float64)
    t = np.linspace(0, 1, 255)
    rgb = np.stack([np.interp(t, xs, cols[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)
    return bytes(RAMP[0][1]) + rgb.tobytes()  # index 0: empty; 1..255: the ramp


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def heatmap_png(values: np.ndarray) -> bytes:
    """A PNG of ``values`` [rows, columns] in [0, 1] (NaN or <= 0: empty, white); row 0 is the top."""
    v = np.nan_to_num(np.asarray(values, np.float64), nan=0.0)
    idx = np.where(v > 0, 1 + np.clip(np.round(v * 254), 0, 254), 0).astype(np.uint8)
    h, w = idx.shape
    raw = b"".join(b"\x00" + idx[r].tobytes() for r in range(h))
    head = struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", head) + _chunk(b"PLTE", _palette())
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    return struct.unpack(">II", data[16:24])


def data_uri(data: bytes) -> str:
    """``data:image/png;base64,...``: the image inline, so the page fetches nothing."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
