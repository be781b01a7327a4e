"""The one module that calls ``torch.distributed`` and DTensor; the rest of initscope calls it.

- Shards: :func:`local_shard` gives a DTensor's local tensor, its global offset per
  dimension and the global shape (Shard(d) and Replicate placements on meshes of any rank;
  chunks as ``torch.chunk`` cuts them, the layout FSDP2's ``fully_shard`` and
  ``distribute_tensor`` use). A plain tensor is its own shard at offset 0.
- Global statistics: :func:`reduce_stats` merges the host :class:`~initscope.stats.Stats` of
  every rank. Each rank packs its numbers (count, mean, M2, min, max, exact counts, the
  log2 histogram, the per-format counts, per-unit nonzero counts) into its own row of a
  [world, n] float64 matrix that is zero elsewhere, and one ``all_reduce`` (sum) fills every
  row on every rank: adding zeros is exact, so each rank then merges the ranks' statistics in
  rank order with Chan's formula, as one process merges parts. Keys marked local (replicated
  parameters under DDP) keep their own statistics. A :class:`Reducer` remembers the agreed
  layout, so a recorded step costs one all_reduce; the first step (and a changed layout)
  adds a 4-number agreement all_reduce.
- Agreement and no hangs: every exchange carries each rank's status (ok, or raised) and a
  hash of its keys and parameter shapes. A rank that raises inside :func:`section` still
  takes part, flagged; a mismatch or a flag makes every rank raise the same
  :class:`~initscope.errors.DistributedError` naming the rank and the parameter or key.
  Every wait is bounded by :func:`set_timeout` (default 300 s). :func:`everywhere` lets the
  ranks agree on a path before one that holds collectives (discovery's real-run fallback).

Without an initialised process group every function is a no-op (``reduce_stats`` returns
its input).
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import sys
from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch

from initscope.errors import DistributedError

__all__ = ["active", "per_rank", "rank", "world_size", "is_writer", "launched", "batch_shard", "is_dtensor", "local", "full", "local_shard",
           "set_timeout", "get_timeout", "Reducer", "agree", "everywhere", "replicated_keys", "reduce_stats", "section", "model_signature", "reshard"]

_TIMEOUT = [300.0]
_OFF = [0]
_OK, _RAISED = 0.0, 1.0


def active() -> bool:
    """True when a default process group is initialised (and not inside :func:`per_rank`)."""
    return not _OFF[0] and torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def per_rank() -> Iterator[None]:
    """Inside, initscope ignores the process group: each rank's own statistics, no collective.

    Examples:
        >>> with per_rank():
        ...     active()
        False
    """
    _OFF[0] += 1
    try:
        yield
    finally:
        _OFF[0] -= 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return torch.distributed.get_world_size() if active() else 1


def is_writer() -> bool:
    """Whether this process prints and writes files: rank 0, or any process without a group."""
    return rank() == 0


@contextlib.contextmanager
def launched() -> Iterator[bool]:
    """Under ``torchrun`` (WORLD_SIZE > 1 in the environment) without a process group: start one
    (nccl with CUDA, else gloo) and end it on exit. Yields whether a group is active inside."""
    import os
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.distributed.is_available() \
            and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started = True
    try:
        yield active()
    finally:
        if started:
            torch.distributed.destroy_process_group()


def batch_shard(x: object) -> object:
    """This rank's part of a batch: tensors cut along dim 0 into one part per rank as
    ``torch.tensor_split`` does (sizes differ by at most one; with fewer samples than ranks the
    last ranks get zero samples), nested tuples, lists and dicts followed; everything else as
    given. Without a group: ``x``."""
    if not active():
        return x
    if isinstance(x, torch.Tensor):
        return torch.tensor_split(x, world_size())[rank()] if x.dim() else x
    if isinstance(x, (tuple, list)):
        return type(x)(batch_shard(v) for v in x)
    if isinstance(x, dict):
        return {k: batch_shard(v) for k, v in x.items()}
    return x


def set_timeout(seconds: float) -> None:
    """Bound every wait of initscope's own collectives (default 300 s)."""
    if not seconds > 0:
        from initscope.errors import ArgumentError
        raise ArgumentError(f"timeout must be > 0 seconds; got {seconds!r}")
    _TIMEOUT[0] = float(seconds)


def get_timeout() -> float:
    """The current bound, in seconds."""
    return _TIMEOUT[0]


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a DTensor (without importing DTensor when torch.distributed is absent)."""
    module = sys.modules.get("torch.distributed.tensor")  # not imported yet: no DTensor exists
    return module is not None and isinstance(t, module.DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local tensor of a DTensor; any other tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def full(t: torch.Tensor | None) -> torch.Tensor | None:
    """The whole value of a DTensor (an all-gather: for small tensors, such as a bias), else ``t``."""
    return t.full_tensor() if is_dtensor(t) else t


def local_shard(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]:
    """(local tensor, global offset per dim, global shape) of a DTensor or a plain tensor.

    Raises:
        DistributedError: a placement other than Shard and Replicate (Partial, strided shards).
    """
    if not is_dtensor(t):
        return t, (0,) * t.dim(), tuple(t.shape)
    from torch.distributed.tensor import Replicate, Shard
    shape, mesh = tuple(t.shape), t.device_mesh
    coord = mesh.get_coordinate()
    sizes, offsets = list(shape), [0] * len(shape)
    for mesh_dim, placement in enumerate(t.placements):
        if isinstance(placement, Replicate):
            continue
        if type(placement) is not Shard:
            raise DistributedError(f"a parameter of shape {shape} has placement {placement!r} on mesh dim "
                                   f"{mesh_dim}; initscope handles Shard(d) and Replicate only", rank=rank())
        d, n = placement.dim, mesh.size(mesh_dim)
        chunk = -(-sizes[d] // n)
        start = min(coord[mesh_dim] * chunk, sizes[d])
        offsets[d] += start
        sizes[d] = min(chunk, sizes[d] - start)
    out = t.to_local()
    if tuple(out.shape) != tuple(sizes):
        raise DistributedError(f"the local shard has shape {tuple(out.shape)}, the placements {t.placements} "
                               f"give {tuple(sizes)}: uneven sharding initscope cannot place", rank=rank())
    return out, tuple(offsets), shape


def reshard(model: torch.nn.Module) -> None:
    """Put FSDP2 modules back to their sharded parameters (a forward leaves the root's unsharded)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported yet: no FSDP2 module exists
    if fsdp is None:
        return
    FSDPModule = fsdp.FSDPModule
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def model_signature(named: Sequence[tuple[str, torch.Tensor]]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, global shape) of every parameter: what every rank must agree on."""
    return [(n, tuple(p.shape)) for n, p in named]


def _digest(obj: object) -> tuple[float, float]:
    h = int.from_bytes(hashlib.blake2b(repr(obj).encode(), digest_size=8).digest(), "little")
    return float(h & ((1 << 26) - 1)), float((h >> 26) & ((1 << 26) - 1))  # exact in float64


def _comm_device() -> torch.device:
    """Where a collective's tensor must live: the current GPU for a pure NCCL group, else the CPU."""
    if str(torch.distributed.get_backend()).lower() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(buf: torch.Tensor, what: str) -> None:
    """Sum the host tensor ``buf`` over ranks in place, waiting at most the set timeout."""
    dev = _comm_device()
    moved = buf if dev.type == "cpu" else buf.to(dev)
    _wait(torch.distributed.all_reduce(moved, async_op=True), what)
    if moved is not buf:
        buf.copy_(moved.cpu())


def _wait(work: object, what: str) -> None:
    try:
        ok = work.wait(timeout=datetime.timedelta(seconds=_TIMEOUT[0]))
    except RuntimeError as e:
        raise DistributedError(f"rank {rank()}: {what}: another rank did not arrive within {_TIMEOUT[0]:g} s "
                               f"({e}); raise the bound with initscope.distributed.set_timeout", rank=rank()) from e
    if ok is False:
        raise DistributedError(f"rank {rank()}: {what}: timed out after {_TIMEOUT[0]:g} s", rank=rank())


def _first_difference(mine: list, theirs: list) -> str:
    for a, b in zip(mine, theirs):
        if a != b:
            return f"{a!r} where rank 0 has {b!r}"
    longer, extra = (mine, "has") if len(mine) > len(theirs) else (theirs, "lacks")
    return f"{extra} {longer[min(len(mine), len(theirs))]!r}"


def _fail_together(what: str, error: str | None, layout: list) -> None:
    """Every rank shares its error (or None) and layout, then all raise the same DistributedError."""
    shared: list = [None] * world_size()
    torch.distributed.all_gather_object(shared, (error, layout))
    for r, (err, _) in enumerate(shared):
        if err is not None:
            raise DistributedError(f"{what}: rank {r} raised {err}; every rank stops here", rank=r)
    for r, (_, lay) in enumerate(shared):
        if lay != shared[0][1]:
            raise DistributedError(f"{what}: the ranks' models differ: rank {r} {_first_difference(lay, shared[0][1])}; "
                                   "build the same model on every rank", rank=r, name=_name(lay, shared[0][1]))
    raise DistributedError(f"{what}: the ranks disagree on the layout of the statistics", rank=0)


def _name(mine: list, theirs: list) -> str | None:
    for a, b in zip(mine, theirs):
        if a != b:
            return str(a[0]) if isinstance(a, tuple) else str(a)
    return None


class Reducer:
    """Merges statistics over ranks; remembers the agreed layout so that later steps cost one all_reduce.

    Args:
        what: names the operation in errors ("probe", "Recorder step", "lsuv").
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._agreed: tuple[tuple[float, float], int] | None = None
        self._layout: list = []

    def fail(self, error: BaseException) -> None:
        """Called by a rank that raised inside :func:`section`: take part flagged, then raise together."""
        msg = f"{type(error).__name__}: {error}"
        if self._agreed is not None:
            n = self._agreed[1]
            buf = torch.zeros(world_size(), 4 + n, dtype=torch.float64)
            buf[rank(), 0] = _RAISED
            _all_reduce(buf, self.what)
        else:
            head = torch.zeros(world_size(), 4, dtype=torch.float64)
            head[rank(), 0] = _RAISED
            _all_reduce(head, self.what)
        _fail_together(self.what, msg, self._layout)

    def exchange(self, vec: np.ndarray, layout: list) -> np.ndarray:
        """[world, len(vec)]: every rank's vector, after the agreement check."""
        self._layout, sig, n = layout, _digest(layout), len(vec)
        row = [_OK, sig[0], sig[1], float(n)]
        if self._agreed is not None:
            buf = torch.zeros(world_size(), 4 + self._agreed[1], dtype=torch.float64)
            buf[rank(), :4] = torch.tensor(row, dtype=torch.float64)
            if (sig, n) == self._agreed:
                buf[rank(), 4:] = torch.from_numpy(vec)
            _all_reduce(buf, self.what)
            heads = buf[:, :4].numpy()
            if (heads[:, 0] == _OK).all() and (heads[:, 1:] == np.array([*self._agreed[0], self._agreed[1]])).all():
                return buf[:, 4:].numpy()
            if (heads[:, 0] != _OK).any() or not (heads[:, 1:] == heads[0, 1:]).all():
                _fail_together(self.what, None, layout)
        head = torch.zeros(world_size(), 4, dtype=torch.float64)  # first step, or a new layout on every rank
        head[rank()] = torch.tensor(row, dtype=torch.float64)
        _all_reduce(head, self.what)
        if (head[:, 0] != _OK).any() or not (head[:, 1:] == head[0, 1:]).all():
            _fail_together(self.what, None, layout)
        self._agreed = (sig, n)
        buf = torch.zeros(world_size(), n, dtype=torch.float64)
        buf[rank()] = torch.from_numpy(vec)
        _all_reduce(buf, self.what)
        return buf.numpy()


    def keyed_sum(self, t: torch.Tensor, key: object) -> torch.Tensor:
        """The sum over ranks of ``t`` (float64, on ``t``'s device), checking that every rank sums
        the same ``key`` (e.g. a layer's name and call index): one all_reduce after the first.

        Raises:
            DistributedError: on every rank, when a rank's key differs from rank 0's (the ranks
                reached different layers: a data-dependent branch, an expert unused on a rank).
        """
        sig = _digest(key)
        vec = np.concatenate([np.array(sig), t.detach().to("cpu", torch.float64).reshape(-1).numpy()])
        rows = self.exchange(vec, [(self.what, "keyed", len(vec))])
        if not (rows[:, :2] == rows[0, :2]).all():
            keys: list = [None] * world_size()
            torch.distributed.all_gather_object(keys, str(key))
            r = next(i for i, k in enumerate(keys) if k != keys[0])
            raise DistributedError(f"{self.what}: the ranks ran different layers: rank {r} reached {keys[r]} where "
                                   f"rank 0 reached {keys[0]}; every rank must run the same layers in the same order "
                                   "(no data-dependent branch or expert skipped on a rank)", rank=r, name=keys[r])
        return torch.from_numpy(rows[:, 2:].sum(0)).reshape(t.shape).to(t.device)


def replicated_keys(params: Sequence[tuple[str, torch.Tensor]]) -> frozenset:
    """The statistics keys that stay this rank's own: value and grad of every plain (replicated,
    e.g. under DDP) parameter; a DTensor's shards are merged over ranks."""
    return frozenset(k for n, p in params if not is_dtensor(p) for k in (("value", n), ("grad", n)))


def agree(layout: list, what: str) -> None:
    """Every rank checks that all ranks hold the same ``layout`` (e.g. :func:`model_signature`).

    Raises:
        DistributedError: on every rank, naming the first rank and entry that differ.
    """
    if active():
        Reducer(what).exchange(np.zeros(0, np.float64), layout)


def everywhere(flag: bool, what: str) -> bool:
    """Whether ``flag`` holds on every rank: one all_reduce (without a process group: ``flag``)."""
    if not active():
        return flag
    buf = torch.tensor([0.0 if flag else 1.0], dtype=torch.float64)
    _all_reduce(buf, what)
    return buf.item() == 0.0


@contextlib.contextmanager
def section(reducer: Reducer | None) -> Iterator[None]:
    """A part of a collective operation: a rank that raises inside it tells the others, who raise too."""
    if reducer is None or not active():
        yield
        return
    try:
        yield
    except DistributedError:
        raise
    except Exception as e:
        reducer.fail(e)
        raise  # not reached: fail raises


def reduce_stats(items: list[tuple[Hashable, object]], reducer: Reducer | None, *,
                 local_keys: frozenset = frozenset(), signature: list | None = None) -> list[tuple[Hashable, object]]:
    """The statistics of all ranks, merged per key in rank order (``items`` from ``to_host``).

    Args:
        items: (key, Stats) pairs, in the same order on every rank.
        reducer: the :class:`Reducer` of this operation (None: return ``items``).
        local_keys: keys whose statistics stay this rank's own (replicated tensors).
        signature: extra layout every rank must agree on, e.g. :func:`model_signature`.
    """
    if reducer is None or not active():
        return items
    from initscope import _packing
    shared = [i for i, (k, _) in enumerate(items) if k not in local_keys]
    vec, sizes = _packing.pack([items[i][1] for i in shared])
    layout = [*(signature or []), *((str(items[i][0]), s) for i, s in zip(shared, sizes))]
    rows = reducer.exchange(vec, layout)
    out = list(items)
    for i, merged in zip(shared, _packing.merge_rows(rows, sizes)):
        out[i] = (items[i][0], merged)
    return out
