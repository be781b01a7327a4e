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
