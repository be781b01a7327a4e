"""The meta stand-in of initscope._shard_meta, in one process (no group: no agreement step).

The distributed cases (FSDP2, tensor parallel) are in tests/test_distributed_discovery.py.
"""
from __future__ import annotations

import torch
from torch import nn

from initscope import _discover, _shard_meta
from initscope.graph import Tracker, discover


class _Tied(nn.Module):
    """The output projection shares the embedding's weight; a 0-d buffer scales the hidden layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.mid, self.head = nn.Embedding(16, 8), nn.Linear(8, 8), nn.Linear(8, 16, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.tensor(3.0))

    def forward(self, x):
        return self.head(torch.relu(self.mid(self.embed(x))) * self.scale)


def _meta_graph(model: nn.Module, x: object):
    tracker = _shard_meta.run(model, x, lambda state, y: _discover._run(model, state, y, Tracker)[0])
    return None if tracker is None else tracker.graph("run")


def _moments(graph) -> dict:
    return {n: [(s.mean, s.second) for s in link.signals] for n, link in graph.layers.items()}


def test_tied_weights_get_one_stand_in_and_the_real_runs_graph():
    model, tokens = _Tied(), torch.arange(12).reshape(3, 4)
    state = _shard_meta._state(model)
    assert state["embed.weight"] is state["head.weight"] and state["embed.weight"].is_meta
    assert "scale" not in state  # a 0-d tensor stays itself: its value is read by the product's rule
    graph, real = _meta_graph(model, tokens), discover(model, tokens)
    assert graph is not None and graph.layers == real.layers
    # the head's input moments: relu of N(0, 1) has E[h^2] = 1/2, times 3^2 from the buffer: 4.5
    assert _moments(graph) == _moments(real) and _moments(graph)["head"][0][1] == 4.5


def test_a_forward_that_cannot_run_on_meta_gives_none_and_leaves_the_model():
    class ItemNet(nn.Sequential):
        def forward(self, x):
            return super().forward(x * x.sum().item())

    model = ItemNet(nn.Linear(4, 4), nn.ReLU())
    handle = model[0].register_forward_hook(lambda m, i, o: None)
    params = [(n, id(p)) for n, p in model.named_parameters()]
    assert _meta_graph(model, torch.ones(2, 4)) is None
    assert [(n, id(p)) for n, p in model.named_parameters()] == params
    assert not any(p.is_meta for p in model.parameters())
    assert list(model[0]._forward_hooks) == [handle.id]
