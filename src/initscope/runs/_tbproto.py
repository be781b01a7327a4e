"""TensorBoard's ``Event`` and ``Summary`` messages encoded by hand, the bytes protobuf would give.

Building one protobuf object per value costs about 2 us each, and a transformer's recorded
step has ~450 scalars and ~50 histograms. The tags repeat from step to step, so the encoded
bytes of the scalars are a template made once per set of tags (:class:`ScalarBlock`): each
step only writes the float32 payloads into their slots. Histograms vary in length with the
span of nonzero bins; their fixed parts (tag, header layout, bin edges) are precomputed and
a step joins slices (:class:`HistogramBlock`).

Wire format (tensorboard/compat/proto, proto3): a field is ``varint(number << 3 | type)``
then its payload; type 1 is 8 little-endian bytes (double), 5 is 4 (float), 0 a varint,
2 a varint length then bytes. ``Event``: wall_time 1 (double), step 2 (int64),
file_version 3 (string), summary 5. ``Summary``: value 1 (repeated). ``Summary.Value``:
tag 1, simple_value 2 (float, in a oneof: written even when 0), histo 5. ``HistogramProto``:
min 1, max 2, num 3, sum 4, sum_squares 5 (doubles, left out when their bits are all zero),
bucket_limit 6 and bucket 7 (packed doubles, left out when empty). Fields go out in number
order, as protobuf's serializer writes them; the tests compare with it byte for byte.
"""
from __future__ import annotations

import struct

import numpy as np

__all__ = ["varint", "event", "ScalarBlock", "HistogramBlock"]

_VARINTS: list[bytes] = []  # varint(n) for n < 2^14, the lengths of the fields here


def varint(n: int) -> bytes:
    """Base-128 varint of ``n`` (negative numbers as their 64-bit two's complement)."""
    if 0 <= n < len(_VARINTS):
        return _VARINTS[n]
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS.extend(varint(n) for n in range(1 << 14))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, summary: list[bytes] | None = None, file_version: str = "") -> bytes:
    """An encoded ``Event``; ``summary``: the encoded ``Summary`` (its values, in pieces), if any."""
    t = struct.pack("<d", wall_time)
    out = [b"\x09" + t if t != bytes(8) else b""]  # proto3: a double whose bits are all zero is left out
    if step:
        out.append(b"\x10" + varint(step))
    if file_version:
        out.append(_field(3, file_version.encode()))
    if summary is not None:
        out += (b"\x2a", varint(sum(map(len, summary))), *summary)
    return b"".join(out)


class ScalarBlock:
    """The encoded ``Summary.Value`` entries of a fixed list of scalar tags.

    Args:
        tags: the tags, in the order of the values :meth:`encode` gets.
    """

    def __init__(self, tags: list[str]) -> None:
        tags = [t.encode() for t in tags]
        heads = {n: b"\x0a" + varint(n + len(varint(n)) + 6) + b"\x0a" + varint(n) for n in set(map(len, tags))}
        self._all = np.frombuffer(b"".join([x for t in tags for x in (heads[len(t)], t, b"\x15\0\0\0\0")]), np.uint8)
        self._sizes = np.array([len(heads[len(t)]) + len(t) + 5 for t in tags], np.int64)  # tag 1, simple_value 2
        self._kept: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def encode(self, values: np.ndarray) -> bytes:
        """The entries of ``values`` (float64, one per tag), as float32; NaN ones left out."""
        keep = values == values
        template, slots = self._template(keep)
        with np.errstate(over="ignore"):  # beyond float32's range: inf, as protobuf's C cast gives
            template[slots] = values[keep].astype("<f4").view(np.uint8)
        return template.tobytes()

    def _template(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The entries kept, as bytes, and the positions of their float32 payloads (made once
        for each set of NaN values a step has; usually one: NaN where a statistic does not apply)."""
        key = keep.tobytes()
        if (found := self._kept.get(key)) is None:
            if len(self._kept) >= _CACHED:
                self._kept.clear()
            ends = np.cumsum(self._sizes[keep])
            found = self._kept[key] = (self._all[np.repeat(keep, self._sizes)], ((ends - 4)[:, None] + np.arange(4)).ravel())
        return found


class HistogramBlock:
    """The encoded ``Summary.Value`` entries of ``HistogramProto`` s of a fixed list of tags, all
    with the same bucket limits (only a nonzero span ``[lo, hi)`` of them written per histogram).

    Args:
        tags: the histograms' tags.
        limits: float64, every bucket's right edge.
    """

    def __init__(self, tags: list[str], limits: np.ndarray) -> None:
        self._tags = [_field(1, t.encode()) for t in tags]
        self._limits = np.ascontiguousarray(limits, "<f8").tobytes()
        self._fixed: dict[tuple[int, int, int, int], tuple[bytes, bytes]] = {}

    def encode(self, rows: list[int], head: np.ndarray, lo: np.ndarray, hi: np.ndarray, counts: np.ndarray) -> bytes:
        """The entries of some of the histograms.

        Args:
            rows: which tags (their indices), one per histogram.
            head: float64 [n, 5]: min, max, num, sum, sum_squares.
            lo, hi: each histogram's span of buckets ``[lo, hi)``, nonempty.
            counts: float64 [n, buckets], the counts of every bucket.
        """
        head = np.ascontiguousarray(head, "<f8")
        heads = np.empty((len(head), 5, 9), np.uint8)  # five (key, double) fields
        heads[:, :, 0] = _HEAD_KEYS
        heads[:, :, 1:] = head.view(np.uint8).reshape(-1, 5, 8)
        raw = heads.tobytes()
        heads = [raw[k:k + 45] for k in range(0, len(raw), 45)]
        for j in np.flatnonzero((head.view(np.int64) == 0).any(1)).tolist():
            heads[j] = _sparse(heads[j])
        data = memoryview(np.ascontiguousarray(counts, "<f8")).cast("B")
        start = np.arange(len(head)) * (counts.shape[1] * 8) + lo * 8
        get, make, out = self._fixed.get, self._make_fixed, []
        for i, a, b, h, s, e in zip(rows, lo.tolist(), hi.tolist(), heads, start.tolist(),
                                    (start + (hi - lo) * 8).tolist()):
            prefix, middle = get((i, a, b, len(h))) or make(i, a, b, len(h))
            out += (prefix, h, middle, data[s:e])
        return b"".join(out)

    def _make_fixed(self, i: int, a: int, b: int, head: int) -> tuple[bytes, bytes]:
        """What comes before the header (Value's key, length and tag, histo's key and length) and
        between it and the counts (bucket_limit; bucket's key and length) of tag ``i`` with
        buckets ``[a, b)`` and a header of ``head`` bytes. Kept for the next steps."""
        tag, n = self._tags[i], _VARINTS[8 * (b - a)]
        size = head + 2 * (1 + len(n) + 8 * (b - a))
        fixed = (b"\x0a" + varint(len(tag) + 1 + len(_VARINTS[size]) + size) + tag + b"\x2a" + _VARINTS[size],
                 b"\x32" + n + self._limits[8 * a:8 * b] + b"\x3a" + n)
        if len(self._fixed) >= 4096:  # at most ~8 MB (a span's limits are up to 2 KB)
            self._fixed.clear()
        self._fixed[i, a, b, head] = fixed
        return fixed


_HEAD_KEYS = np.array([f << 3 | 1 for f in range(1, 6)], np.uint8)
_CACHED = 16  # templates kept per block


def _sparse(head: bytes) -> bytes:
    """The five (key, double) fields of ``head`` less those whose bits are all zero."""
    return b"".join(head[k:k + 9] for k in range(0, 45, 9) if head[k + 1:k + 9] != bytes(8))
