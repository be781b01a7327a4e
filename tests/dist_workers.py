"""Functions the distributed tests run on every rank (importable by spawned processes)."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from initscope.initialize import initialize

CASES = [("kaiming", "normal"), ("kaiming", "uniform"), ("kaiming", "truncated_normal"),
         ("xavier", None), ("orthogonal", None)]


def _mlp() -> nn.Sequential:  # 21 rows: uneven shards on 2 and 4 ranks
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 21), nn.ReLU(), nn.Linear(21, 21), nn.Tanh(), nn.Linear(21, 3))


def _fsdp(model: nn.Module, world: int) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (world,))
    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _differences(sharded: nn.Module, reference: nn.Module) -> list[str]:
    full = {n: p.full_tensor() for n, p in sharded.named_parameters()}
    fresh = dict(_mlp().named_parameters())  # the reference must have been written, not left as built
    return [n for n, p in reference.named_parameters() if not torch.equal(full[n], p.detach())] + [
        f"{n} unwritten" for n, p in reference.named_parameters() if p.dim() == 2 and torch.equal(fresh[n], p)]


def _fsdp_worker(rank: int, world: int) -> dict:
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    out = {}
    for scheme, dist in CASES:
        reference, model = _mlp(), _fsdp(_mlp(), world)
        initialize(reference, scheme, x, seed=7, distribution=dist, rng="philox")
        plan = initialize(model, scheme, x, seed=7, distribution=dist)  # rng="auto": philox for DTensors
        out[(scheme, dist)] = (_differences(model, reference), plan.notes)
    with torch.device("meta"):
        model = _mlp()
    model = _fsdp(model, world)
    model.to_empty(device="cpu")
    reference = _mlp()
    initialize(reference, "kaiming", x, seed=7, rng="philox")
    initialize(model, "kaiming", x, seed=7)
    out["meta"] = (_differences(model, reference), ())
    return out


def _tp_worker(rank: int, world: int) -> list[str]:
    """A 2 x 2 mesh: Linear weights sharded on both dims, or replicated on one and sharded on the other."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_module, distribute_tensor
    mesh = init_device_mesh("cpu", (2, 2))
    layouts = {"0": [Shard(0), Shard(1)], "2": [Replicate(), Shard(1)], "4": [Shard(1), Replicate()]}

    def partition(name, module, mesh):
        for pname, p in list(module.named_parameters(recurse=False)):
            place = layouts[name] if p.dim() == 2 else [Replicate(), Shard(0)]
            module.register_parameter(pname, nn.Parameter(distribute_tensor(p.detach(), mesh, place)))

    bad = []
    for scheme, dist in CASES:
        model = distribute_module(_mlp(), mesh, lambda n, m, mesh: partition(n, m, mesh) if n in layouts else None)
        reference = _mlp()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DiscoveryWarning: no example input (DTensor weights, plain input)
            initialize(reference, scheme, seed=3, distribution=dist, rng="philox")
            initialize(model, scheme, seed=3, distribution=dist)
        bad += [f"{scheme}/{dist}: {n}" for n in _differences(model, reference)]
    return bad


# ---- global statistics -----------------------------------------------------------------------------

def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))


def _sum_loss(out):  # a sum over samples: the gradient of each sample does not depend on the batch split
    return out.pow(2).sum()


def _close(a: float, b: float, rel: float = 1e-5) -> bool:
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))


def _same(s, r, scale: float = 1.0) -> list[str]:
    """What differs between a reduced Stats s and the single-process r (``scale``: s's data times it)."""
    bad = [k for k in ("count", "zeros", "nan") if getattr(s, k) != getattr(r, k)]
    bad += [k for k in ("mean", "std", "min", "max") if not _close(getattr(s, k) * scale, getattr(r, k))]
    if scale == 1.0:
        bad += [k for k in ("hist", "formats") if not (getattr(s, k) == getattr(r, k)).all()]
        if s.unit_nonzero is not None and not (s.unit_nonzero == r.unit_nonzero).all():
            bad.append("unit_nonzero")
    return bad


def _wrap(model: nn.Module, mode: str, world: int) -> nn.Module:
    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    return _fsdp(model, world) if mode == "fsdp" else model


def _stats_worker(rank: int, world: int, mode: str) -> dict:
    import initscope
    from initscope import distributed
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    with distributed.per_rank():  # the single-process figures, on every rank
        ref = initscope.probe(_net(), x, loss_fn=_sum_loss)
    trace = initscope.probe(_wrap(_net(), mode, world), x.chunk(world)[rank], loss_fn=_sum_loss)
    bad = []
    layers = {a.name.removeprefix("module."): a for a in trace.layers}
    for b in ref.layers:
        a = layers[b.name]
        for phase in ("forward", "backward"):
            bad += [f"{b.name} {phase} {k}" for k in _same(getattr(a.outputs[0], phase), getattr(b.outputs[0], phase))]
    grads = {p.name.removeprefix("module."): p for p in trace.params}
    for p in ref.params:  # DDP and FSDP2 average gradients over ranks: times world
        bad += [f"{p.name} value {k}" for k in _same(grads[p.name].value, p.value)]
        bad += [f"{p.name} grad {k}" for k in _same(grads[p.name].grad, p.grad, scale=world)]
    calls = []
    real = distributed._all_reduce
    distributed._all_reduce = lambda buf, what: (calls.append(what), real(buf, what))[1]
    model = _wrap(_net(), mode, world)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every recorded step sees the same weights
    per_step = []
    sink = _ListSink()
    with initscope.Recorder(model, every=2, sinks=[sink]) as rec:
        for _ in range(5):
            before = len(calls)
            opt.zero_grad()
            _sum_loss(model(x.chunk(world)[rank])).backward()
            opt.step()
            rec.step()
            per_step.append(len(calls) - before)
    distributed._all_reduce = real
    merged = {r.name.removeprefix("module."): r for r in rec.trace.layers}
    for b in ref.layers:  # three recorded steps of the same batch: count x3, the same moments
        s, r = merged[b.name].outputs[0].forward, b.outputs[0].forward
        bad += [f"Recorder {b.name} {k}" for k in ("mean", "std", "min", "max") if not _close(getattr(s, k), getattr(r, k))]
        bad += [f"Recorder {b.name} count"] * (s.count != 3 * r.count)
    return {"bad": bad, "per_step": per_step, "first_mean": trace.layers[0].outputs[0].forward.mean,
            "sink": (sink.opened, [st.step for st in sink.steps], sink.closed)}


class _ListSink:
    """A Recorder sink that keeps what it is given."""

    def __init__(self):
        self.opened, self.steps, self.closed = False, [], False

    def open(self, summary):
        self.opened = True

    def write(self, step):
        self.steps.append(step)

    def close(self):
        self.closed = True


def _lsuv_all(rank: int, world: int) -> dict:
    runs = {mode: _lsuv_worker(rank, world, mode) for mode in ("plain", "ddp", "fsdp")}
    return {**runs, "fsdp, verify='pass'": _lsuv_worker(rank, world, "fsdp", "pass")}


def _late_worker(rank: int, world: int) -> tuple:
    """Rank 1 never reaches the reduction: rank 0 must stop within its timeout."""
    import time

    import initscope
    from initscope.errors import DistributedError
    if rank == 1:
        time.sleep(12)
        return ("slept",)
    initscope.distributed.set_timeout(3)
    start = time.monotonic()
    try:
        initscope.probe(nn.Linear(4, 4), torch.randn(8, 4))
    except DistributedError as e:
        return ("DistributedError", time.monotonic() - start, str(e))
    return ("no error",)


def _lsuv_worker(rank: int, world: int, mode: str, verify: str = "auto") -> dict:
    import initscope
    from initscope import distributed
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    ref_model, model = _net(), _wrap(_net(), mode, world)
    pre = "orthogonal"
    if mode == "fsdp":  # lsuv's pre_init is per rank: a sharded model is initialized shard-aware first
        initscope.initialize(model, "orthogonal", x.chunk(world)[rank], seed=1)
        initscope.initialize(ref_model, "orthogonal", x, seed=1, rng="philox")
        pre = None
    with distributed.per_rank():
        ref = initscope.lsuv(ref_model, x, pre_init=pre, verify=verify)
    report = initscope.lsuv(model, x.chunk(world)[rank], pre_init=pre, verify=verify)
    bad = [f"verified {report.verified} vs {ref.verified}"] * (report.verified != ref.verified)
    bad += [f"{a.name} scale {a.scale} vs {b.scale}" for a, b in zip(report.layers, ref.layers)
           if not _close(a.scale, b.scale)]
    bad += [f"{a.name} std after {a.std_after} vs {b.std_after}" for a, b in zip(report.layers, ref.layers)
            if not _close(a.std_after, b.std_after)]
    weights = {n.removeprefix("module."): (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()
               for n, p in model.named_parameters()}
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, weights)
    bad += [f"rank {r} {n} differs from rank 0" for r, w in enumerate(gathered) for n in w
            if not torch.equal(w[n], gathered[0][n])]
    bad += [f"{n} differs from one process" for n, p in ref_model.named_parameters()
            if not torch.allclose(weights[n], p.detach(), rtol=1e-5, atol=1e-7)]
    return {"bad": bad}


# ---- failures: the same typed error on every rank -----------------------------------------------

class _Boom(nn.Module):
    def __init__(self, fail: bool):
        super().__init__()
        self.lin, self.fail = nn.Linear(4, 4), fail

    def forward(self, x):
        if self.fail:
            raise ValueError("boom on this rank")
        return self.lin(x)


def _error_worker(rank: int, world: int, case: str) -> tuple:
    import initscope
    from initscope.errors import DistributedError
    initscope.distributed.set_timeout(20)
    x = torch.randn(8, 4)
    if case == "raises":
        model = _Boom(fail=rank == 1)
    else:  # rank 1 builds a wider hidden layer
        model = nn.Sequential(nn.Linear(4, 8 + 2 * (rank == 1)), nn.ReLU(), nn.Linear(8 + 2 * (rank == 1), 1))
    try:
        initscope.probe(model, x)
    except DistributedError as e:
        return (type(e).__name__, e.rank, e.name, str(e))
    return ("no error",)


def _cli_worker(rank: int, world: int, spec: str, out_dir: str) -> tuple:
    import io
    import os

    from initscope.cli import main
    out = io.StringIO()
    path = os.path.join(out_dir, f"stats{rank}.json")
    code = main(["probe", spec, "--json", path], out=out, width=100)
    return code, out.getvalue(), os.path.exists(path)


# ---- regressions of issue 13's review: ranks that take different paths -----------------------------

class _Branchy(nn.Module):
    """Layer `b` runs on rank 0 only (a data-dependent branch, an MoE expert without tokens)."""

    def __init__(self, skip_b: bool):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c, self.skip_b = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16), skip_b

    def forward(self, x):
        x = self.a(x)
        return self.c(x if self.skip_b else self.b(x) * 5)


class _IntParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.steps = nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)

    def forward(self, x):
        return self.lin(x)


def _paths_worker(rank: int, world: int) -> dict:
    """B4 (LSUV on ranks that run different layers), B5 (Recorder, integer parameter), B7 (a rank
    with zero samples; zero samples everywhere), in one group."""
    import initscope
    from initscope import distributed
    from initscope.errors import DistributedError, ShapeError
    distributed.set_timeout(20)
    out = {}
    model = _Branchy(skip_b=rank == 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        initscope.lsuv(model, torch.randn(64, 16, generator=torch.Generator().manual_seed(rank)) * (1 + 10 * rank))
        out["lsuv"] = ("no error",)
    except DistributedError as e:
        restored = all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        out["lsuv"] = ("DistributedError", e.rank, e.name, str(e), restored)
    model = _IntParam()
    with initscope.Recorder(model) as rec:
        model(torch.randn(8, 4)).pow(2).mean().backward()
        rec.step()
    out["recorder"] = sorted({row.layer for row in rec.history})
    x = distributed.batch_shard(torch.randn(1, 4, generator=torch.Generator().manual_seed(5)))
    trace = initscope.probe(nn.Linear(4, 4), x)
    out["one_sample"] = (x.shape[0], trace.inputs[0].forward.count, trace.layers[0].outputs[0].forward.count)
    try:
        initscope.probe(nn.Linear(4, 4), torch.randn(0, 4))
        out["empty"] = ("no error",)
    except ShapeError as e:
        out["empty"] = ("ShapeError", str(e))
    return out
