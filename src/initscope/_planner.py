"""Turn a discovered graph and the options into :class:`~initscope.initplan.PlanRow` records.

Every parameter belongs to the outermost *atomic* module on its path (a weight layer,
a normalization, an activation; see :func:`initscope._ops.classify_module`), its *unit*:
``attn.out_proj.weight`` belongs to ``attn`` (MultiheadAttention). Then:

- layer weights (2-D or more): one row per block, std = scaled_std(fans, mode, gains)
  times the residual factor; embeddings std 1 (fan_in 1, gain 1) in every mode, with
  their ``padding_idx`` row set to 0 as torch does;
- layer biases: 0 (``bias="zeros"``) or untouched (``"keep"``);
- normalization weight 1 (0 for ``zero_last_norm``), bias 0;
- untouched, with the reason: activation parameters (PReLU), parameters held directly by
  a container, other 1-D layer parameters, lazy or non-float ones, and second names of a
  shared tensor.

A tensor shared by an embedding and a layer (tied input and output embeddings) is scaled
for the layer use, and embeddings added to that lookup take its std;
:mod:`initscope._tied` gives the reasoning and the trade-off.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from torch import nn
from torch.nn.parameter import is_lazy

from initscope._experts import experts_role, exit_gain
from initscope._ops import classify_module
from initscope._residual import Factors
from initscope._rules import EMBEDDINGS, Gains, given_for, layer_gains, role
from initscope._tied import Streams, alias_reason, split_uses
from initscope.errors import UnknownOptionError, choices_message
from initscope.fans import fan, is_stacked_experts, tensor_fans
from initscope.graph import Graph
from initscope.init import scaled_std
from initscope.initplan import PlanRow, Untouched

__all__ = ["Planner", "check_nonlinearity"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def check_nonlinearity(model: nn.Module, nonlinearity: object) -> None:
    """A ``nonlinearity`` mapping must name weight layers of ``model``."""
    if not isinstance(nonlinearity, Mapping):
        return
    known = [n for n, m in model.named_modules() if (s := classify_module(m)) is not None and s.kind == "layer"]
    for key in nonlinearity:
        if key not in known:
            raise UnknownOptionError(choices_message(
                "layer in nonlinearity=", key, known[:12], "map weight-layer names to activations"))


def _is_bias(local: str) -> bool:
    return "bias" in local.rsplit(".", 1)[-1].split("_")


class Planner:
    """Builds the rows of one plan; ``notes`` collects plan-wide remarks."""

    def __init__(self, model: nn.Module, graph: Graph | None, scheme: str, mode: str, distribution: str,
                 bias: str, convention: str, residual: Factors):
        self.model, self.graph, self.scheme, self.mode = model, graph, scheme, mode
        self.distribution, self.bias, self.residual = distribution, bias, residual
        self.steps = {n: (m, classify_module(m)) for n, m in model.named_modules(remove_duplicate=False)}
        self.gains = Gains(mode, convention)
        self.streams = Streams(graph)
        self.notes: list[str] = []

    def unit(self, name: str) -> tuple[str, nn.Module, object, str] | None:
        """(unit name, unit module, its step, the parameter's name inside it), or None."""
        parts = name.split(".")
        for i in range(len(parts)):
            prefix = ".".join(parts[:i])
            module, step = self.steps[prefix]
            if step is not None:
                return prefix, module, step, ".".join(parts[i:])
        return None

    def running_stats(self) -> tuple[str, ...]:
        """Modules whose running statistics initialize() resets."""
        return tuple(n for n, m in self.model.named_modules()
                     if callable(getattr(m, "reset_running_stats", None)) and getattr(m, "track_running_stats", False))

    def rows(self, nonlinearity: object) -> tuple[list[PlanRow], list[Untouched]]:
        """All rows, in parameter order, and the untouched parameters."""
        groups: dict[int, tuple[list[str], nn.Parameter]] = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), ([], p))[0].append(name)
        tied_first = sorted(groups, key=lambda k: not split_uses(self._units(groups[k][0]))[1])
        outs = {k: self._param(*groups[k], nonlinearity) for k in tied_first}  # tied scales known first
        rows, untouched = [], []
        for k, (names, p) in groups.items():
            out = outs[k]
            rows += out if isinstance(out, list) else []
            untouched += [out] if isinstance(out, Untouched) else []
            units = self._units(names)
            why = alias_reason(names[0], units, split_uses(units)[0] if self.scheme != "torch_default" else units)
            untouched += [Untouched(a, tuple(p.shape), why) for a in names[1:]]
        self.notes += self.gains.notes + self._output_notes() + self._eval_norm_notes()
        return rows, untouched

    def _eval_norm_notes(self) -> list[str]:
        """Normalizations that run on running statistics (eval mode): after initialize() resets
        them to mean 0, variance 1, each is the identity, not the normalization the plan assumes."""
        fixed = [n for n in self.running_stats() if not self.model.get_submodule(n).training]
        if not fixed:
            return []
        names = ", ".join(f"`{n}`" for n in fixed[:3]) + (", ..." if len(fixed) > 3 else "")
        count = f"{len(fixed)} layer{'s' if len(fixed) > 1 else ''}"
        return [f"batch normalization in eval mode: {count} ({names}) normalise with running statistics, "
                "which initialize() resets to mean 0, variance 1, so each is the identity until "
                "training sets them; the gains after a normalization assume it normalises (as with batch "
                "statistics, in train mode), so the output scale in eval mode is not the plan's"]

    def _output_notes(self) -> list[str]:
        """Output layers that read a normalization: the output scale is theirs alone."""
        notes = []
        for name, link in (self.graph.layers.items() if self.graph else ()):
            producers = [n for n in link.producers if n.kind != "constant"]
            if any(n.kind == "output" for n in link.consumers) and producers and \
                    all(n.kind == "norm" for n in producers):
                notes.append(f"output layer `{name}` reads a normalization ({producers[0].describe()}): the output's "
                             "scale is set by that layer alone, so it does not show whether the gains before the "
                             "normalization keep the signal; probe the layers before it to see that")
        return notes

    def _units(self, names: list[str]) -> list[tuple]:
        """The distinct units that use one tensor (several for a shared or tied weight)."""
        return list({u[0]: u for u in map(self.unit, names) if u is not None}.values())

    def _param(self, names: list[str], p: nn.Parameter, nonlinearity: object) -> list[PlanRow] | Untouched:
        name, shape = names[0], tuple(p.shape)
        units = self._units(names)
        if self.scheme == "torch_default":
            return self._torch_default(name, shape, *(units[0] if units else ("", None, None, "")))
        if not units:
            owner = name.rpartition(".")[0]
            return Untouched(name, shape, f"held directly by `{owner or 'the model'}` "
                             f"({type(self.model.get_submodule(owner)).__name__}), not by a layer initscope knows; "
                             "initialize it yourself")
        unit_name, unit, step, local = units[0]
        if is_lazy(p) or not p.is_floating_point():
            why = "lazy: run one forward first" if is_lazy(p) else f"dtype {p.dtype} is not floating point"
            return Untouched(name, shape, why)
        if step.kind == "norm":
            return self._norm(name, shape, unit_name, unit, local)
        if step.kind != "layer":
            return Untouched(name, shape, f"parameter of the activation `{unit_name}` ({type(unit).__name__}): kept")
        if len(shape) < 2 or (_is_bias(local) and is_stacked_experts(unit)):
            if not _is_bias(local):
                return Untouched(name, shape, f"1-D parameter of `{unit_name}` that is not a bias: kept")
            if self.bias == "keep":
                return Untouched(name, shape, "bias='keep'")
            return [self._constant(name, shape, unit_name, unit, local, 0.0, "bias set to 0")]
        setters, lookups, tied = split_uses(units)
        if tied:
            self.notes.append(tied)
        given = given_for(nonlinearity, setters[0][0])
        return self._weight(name, shape, setters, setters[0][3], given, lookups, tied)

    def _sides(self, unit_name: str, side: str = "both") -> tuple[tuple[str, ...], tuple[str, ...]]:
        link = self.graph.layers.get(unit_name) if self.graph else None
        if link is None:
            return (), ()
        inside = (f"inside {link.layer_type}",)
        before = _described(link.producers) if side in ("entry", "both") else inside
        after = _described(link.consumers) if side in ("exit", "both") else inside
        return before, after

    def _constant(self, name, shape, unit_name, unit, local, value, reason, residual=1.0) -> PlanRow:
        before, after = self._sides(unit_name, role(unit, local))
        return PlanRow(name, local.rsplit(".", 1)[-1], (0, shape[0] if shape else 1), unit_name,
                       type(unit).__name__, shape, 1.0, 1.0, math.nan, before, after, math.nan, 0.0, None,
                       "zeros" if value == 0 else "ones", residual, reason)

    def _norm(self, name, shape, unit_name, unit, local) -> list[PlanRow] | Untouched:
        if local == "weight" and unit_name in self.residual.norms:
            return [self._constant(name, shape, unit_name, unit, local, 0.0, self.residual.norms[unit_name], 0.0)]
        if local == "weight":
            return [self._constant(name, shape, unit_name, unit, local, 1.0, "normalization scale set to 1")]
        if local == "bias":
            return [self._constant(name, shape, unit_name, unit, local, 0.0, "normalization shift set to 0")]
        return Untouched(name, shape, f"parameter {local!r} of normalization `{unit_name}`: kept")

    def _weight(self, name, shape, units, local, given, lookups=(), tied="") -> list[PlanRow]:
        unit_name, unit = units[0][0], units[0][1]
        f, side = fan(unit, local), experts_role(unit, local) or role(unit, local)
        g_f, g_b, why = self._gains(units, side, given)
        which, factor, res_why = self.residual.layers.get(unit_name, ("all", 1.0, ""))
        factor = factor if which == "all" or side in ("exit", "both") else 1.0
        dist, extra = self._distribution(unit, shape)
        embedding = isinstance(unit, EMBEDDINGS)
        stream, why_stream = self.streams.embedding_std(unit_name) if embedding else (1.0, "")
        why = why_stream or why
        reason = "; ".join(x for x in (tied, why, res_why * (factor != 1.0), extra, f.note * f.fallback) if x)
        head = (name, unit_name, type(unit).__name__, shape, *self._sides(unit_name, side))
        rows = []
        for b in f.blocks:
            base = stream if embedding else scaled_std(b.fan_in, b.fan_out, self.mode, g_f, g_b)
            used, std = (1.0 if embedding else b.value(self.mode)), base * factor
            kind = "zeros" if factor == 0 else dist
            rows.append(_row(head, b.name, (b.rows.start, b.rows.stop), (b.fan_in, b.fan_out, used),
                             base * math.sqrt(used), std, kind, factor, reason))
        if lookups:
            self.streams.record(lookups, rows[0].std)
        lookup = next((u[1] for u in (*units[:1], *lookups) if isinstance(u[1], nn.Embedding)), None)
        padding = getattr(lookup, "padding_idx", None)
        if padding is not None:
            rows.append(_row(head, "padding_idx", (padding, padding + 1), (1.0, 1.0, math.nan), math.nan, 0.0,
                             "zeros", 1.0, "padding_idx row set to 0, as torch"))
        return rows

    def _gains(self, units, side: str, given: object) -> tuple[float, float, str]:
        if isinstance(units[0][1], EMBEDDINGS):
            return 1.0, 1.0, "embedding: a lookup (fan_in 1), so std 1 = gain 1 in every mode, as torch's N(0, 1)"
        links = [self.graph.layers[u[0]] for u in units if self.graph and u[0] in self.graph.layers]
        g_f, g_b, why = layer_gains(links, side, self.scheme, self.mode, self.gains, given)
        inner = exit_gain(units[0][1]) if side == "exit" and experts_role(units[0][1], units[0][3]) else None
        if inner and given is None and self.scheme not in ("xavier", "lecun") and self.gains.convention == "variance" \
                and self.mode != "fan_out":
            said = f"inside {type(units[0][1]).__name__}, input gain 1"
            g_f, why = inner[0], why.replace(said, inner[1]) if said in why else f"{why}; forward: {inner[1]}"
        if self.graph is not None and self.graph.method == "run" and not links:
            why = "not reached by the forward pass on example_input; " + why
        return g_f, g_b, why

    def _distribution(self, unit: nn.Module, shape: tuple[int, ...]) -> tuple[str, str]:
        if self.scheme == "delta_orthogonal":
            if isinstance(unit, _CONVS) and len(shape) >= 3:
                return "delta_orthogonal", ""
            return "orthogonal", "delta_orthogonal needs a conv: orthogonal here"
        if isinstance(unit, EMBEDDINGS) and self.distribution == "orthogonal":
            return "normal", "embedding: normal instead of orthogonal"
        return self.distribution, ""

    def _torch_default(self, name, shape, unit_name, unit, step, local) -> list[PlanRow] | Untouched:
        owner_name = name.rpartition(".")[0]
        owner = self.model.get_submodule(owner_name)
        if not _resettable(owner):
            return Untouched(name, shape, f"torch_default: `{owner_name or 'the model'}` "
                             f"({type(owner).__name__}) has no reset_parameters()")
        if unit is None:  # a parameter held by a container that resets it itself
            unit_name, unit, local = owner_name, owner, name.rpartition(".")[2]
        dist, std, note = _torch_formula(unit, local, shape)
        if step is not None and step.kind == "norm" and local in ("weight", "bias"):
            dist, std, note = ("ones" if local == "weight" else "zeros"), 0.0, "weight 1, bias 0"
        why = f"torch_default: {type(owner).__name__}'s own reset, seeded by (seed, `{owner_name}`); {note}"
        head = (name, unit_name, type(unit).__name__, shape, (), ())
        nan = (math.nan,) * 3
        return [_row(head, local.rsplit(".", 1)[-1], (0, shape[0] if shape else 1), nan, math.nan, std, dist, 1.0, why)]


def _row(head: tuple, block: str, rows: tuple[int, int], fans: tuple[float, float, float], gain: float,
         std: float, distribution: str, residual: float, reason: str) -> PlanRow:
    name, layer, layer_type, shape, before, after = head
    bound = math.sqrt(3.0) * std if distribution == "uniform" else None
    return PlanRow(name, block, rows, layer, layer_type, shape, *fans, before, after, gain, std, bound,
                   distribution, residual, reason)


def _described(nodes) -> tuple[str, ...]:
    """Each node's description; more than two weight layers (a residual stream read by every
    later block) collapse into one entry."""
    layers = [n.describe() for n in nodes if n.kind == "layer"]
    rest = [n.describe() for n in nodes if n.kind != "layer"]
    if len(layers) > 2:
        layers = [f"{layers[0]} and {len(layers) - 1} more layers"]
    return tuple(dict.fromkeys(rest + layers))


def _resettable(module: nn.Module) -> bool:
    return callable(getattr(module, "reset_parameters", None)) or isinstance(module, nn.MultiheadAttention)


def _torch_formula(unit: nn.Module, local: str, shape: tuple[int, ...]) -> tuple[str, float, str]:
    """What torch's reset code draws, where initscope knows it (else NaN)."""
    leaf = local.rsplit(".", 1)[-1]
    if isinstance(unit, nn.MultiheadAttention) and not local.startswith("out_proj.weight"):
        if "bias" in leaf:
            return "zeros", 0.0, "bias 0"
        fan_in, fan_out = tensor_fans(shape)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return "uniform", bound / math.sqrt(3), "xavier_uniform_ (torch's shape fans)"
    if isinstance(unit, (nn.Linear, nn.MultiheadAttention, *_CONVS)):
        weight = unit.out_proj.weight if isinstance(unit, nn.MultiheadAttention) else unit.weight
        bound = 1.0 / math.sqrt(tensor_fans(weight.shape)[0])
        return "uniform", bound / math.sqrt(3), "kaiming_uniform_(a=sqrt(5)): bound 1/sqrt(fan_in)"
    if isinstance(unit, EMBEDDINGS):
        return "normal", 1.0, "N(0, 1)"
    if isinstance(unit, (nn.RNNBase, nn.RNNCellBase)):
        bound = 1.0 / math.sqrt(unit.hidden_size)
        return "uniform", bound / math.sqrt(3), "U(-1/sqrt(hidden), 1/sqrt(hidden))"
    return "reset_parameters", math.nan, "formula not known to initscope"
