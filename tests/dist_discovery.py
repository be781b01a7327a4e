"""Rank functions of tests/test_distributed_discovery.py (importable by spawned processes)."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from initscope.initialize import initialize


def _mlp() -> nn.Sequential:  # 21 rows: uneven shards on 2 ranks
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 21), nn.ReLU(), nn.Linear(21, 21), nn.Tanh(), nn.Linear(21, 3))


class _ItemOnBigBatch(nn.Module):
    """Reads a value (``.item()``: impossible on meta) when its batch has more than 2 rows."""

    def __init__(self):
        super().__init__()
        self.net = _mlp()

    def forward(self, x):
        if x.shape[0] > 2:
            x = x * (float(x.abs().sum().item()) > -1)  # times 1: a value read, nothing changed
        return self.net(x)


def _fsdp(model: nn.Module, world: int) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (world,))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _hooks(model: nn.Module) -> list:
    return [(n, list(m._forward_pre_hooks.items()), list(m._forward_hooks.items())) for n, m in model.named_modules()]


def _rows(plan) -> list[str]:
    """The plan's rows as text, the layer type without FSDP2's class prefix (FSDPLinear)."""
    return [repr(dataclasses.replace(r, layer_type=r.layer_type.removeprefix("FSDP"))) for r in plan.rows]


def _same(sharded: nn.Module, reference: nn.Module) -> bool:
    full = dict(sharded.named_parameters())
    return all(torch.equal(full[n].full_tensor(), p.detach()) for n, p in reference.named_parameters())


def _watch(model: nn.Module, seen: list) -> list:
    """A user's pre-hook on every Linear: the device of the weight each forward call reads (after
    FSDP2's own pre-hook, which unshards: a plain tensor on cpu there means a gathered weight)."""
    from torch.distributed.tensor import DTensor

    def hook(module, args):
        w = module.weight
        seen.append("dtensor" if isinstance(w, DTensor) else w.device.type)
    return [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]


def _discovery_worker(rank: int, world: int) -> dict:
    """FSDP2 with example_input: what the forward saw, hooks and FSDP2 state after, the plan and
    weights against one process; then a model whose forward cannot run on meta on rank 0 only."""
    from torch.distributed.fsdp import fully_shard
    out: dict = {}
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    reference = _mlp()
    ref_plan = initialize(reference, "kaiming", x, seed=7, rng="philox")
    model, seen = _fsdp(_mlp(), world), []
    _watch(model, seen)
    hooks, params = _hooks(model), [(n, id(p)) for n, p in model.named_parameters()]
    plan = initialize(model, "kaiming", x[rank::world], seed=7)  # each rank its half of the batch
    out["params back"] = params == [(n, id(p)) for n, p in model.named_parameters()]
    out["seen"] = sorted(set(seen))
    out["calls"] = len(seen)
    out["hooks back"] = _hooks(model) == hooks
    out["lazy init"] = fully_shard.state(model)._is_root  # None: FSDP2's root forward never ran
    out["plan"] = _rows(plan) == _rows(ref_plan) and plan.discovery == ref_plan.discovery == "run"
    out["weights"] = _same(model, reference)
    # rank 0 gets 3 rows (.item() runs: meta fails), rank 1 gets 1 (meta works): both must run for real
    reference = _ItemOnBigBatch()
    initialize(reference, "kaiming", x, seed=7, rng="philox")
    model, seen = _fsdp(_ItemOnBigBatch(), world), []
    _watch(model, seen)
    hooks = _hooks(model)
    plan = initialize(model, "kaiming", x[:3] if rank == 0 else x[3:], seed=7)
    out["fallback seen"] = sorted(set(seen))
    out["fallback hooks back"] = _hooks(model) == hooks
    out["fallback weights"] = _same(model, reference)
    return out


def _tp_worker(rank: int, world: int) -> dict:
    """Tensor-parallel DTensor weights with a plain example_input: without hooks, and with
    parallelize_module's (an even model: ColwiseParallel needs rows divisible by the world)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_module, distribute_tensor
    mesh = init_device_mesh("cpu", (world,))

    def partition(name, module, mesh):
        for pname, p in list(module.named_parameters(recurse=False)):
            module.register_parameter(pname, nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(p.dim() - 1)])))

    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    reference = _mlp()
    ref_plan = initialize(reference, "kaiming", x, seed=3, rng="philox")
    model = distribute_module(_mlp(), mesh, partition)
    plan = initialize(model, "kaiming", x, seed=3)
    out = {"plan": _rows(plan) == _rows(ref_plan), "weights": _same(model, reference)}
    # parallelize_module's input and output hooks (local tensors to DTensors and back)
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    even = lambda: (torch.manual_seed(0), nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)))[1]  # noqa: E731
    reference = even()
    ref_plan = initialize(reference, "kaiming", x, seed=3, rng="philox")
    model = parallelize_module(even(), mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    plan = initialize(model, "kaiming", x, seed=3)
    out["hooked"] = _rows(plan) == _rows(ref_plan) and _same(model, reference)
    return out
