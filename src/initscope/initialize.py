"""Whole-model initialization: :func:`plan` decides, :func:`initialize` decides and writes.

One call finds the activations around every weight layer (:mod:`initscope.graph`),
initializes packed weights block by block with layout-aware fans (:func:`initscope.fan`),
scales residual branches, and returns an :class:`~initscope.initplan.InitPlan` that
shows its work. The rules:

- **fan_in** (the default): the *producer* of a layer's input decides,
  gain = 1/sqrt(E[phi(z)^2]), from Var[f'] = s2 * fan * E[h^2] with h = phi(f). Raw
  data, a normalization, another layer or an op without a moment rule give gain 1; ops
  with one (products and gates, GLU, sums, concat, dropout: :mod:`initscope.oprules`) give
  1/sqrt(E[x^2]) of the moments carried through them. This
  differs from the usual PyTorch habit (the gain of the activation *after* the layer):
  for the first layer of a ReLU net the habit gives sqrt(2), twice the variance.
- **fan_out**: the *consumer* decides, gain = 1/sqrt(E[phi'(z)^2]) of the activation
  after the layer (normalizations in between are passed through); none gives 1.
- **fan_avg / fan_geo_avg**: both, combined by :func:`initscope.init.scaled_std`; for
  ReLU on both sides fan_avg gives the textbook 4 / (D_h + D_h').
- ``convention="torch"``: ``calculate_gain`` of the consumer, in every mode (an activation
  torch has no gain for, such as GELU, uses its forward gain; the plan says so).
- **Mixed** producers or consumers, a module called more than once, and a parameter
  shared by several layers: the average of the second moments, gain = 1/sqrt(mean_i 1/g_i^2)
  (the input taken to come from each source equally often). The row's reason says so.
- Inside a layer, sides without an outside neighbour get gain 1: attention's
  ``out_proj`` input and ``in_proj`` output, RNN recurrences and upper layers.
- **Embeddings** get std 1 in every mode and scheme (a lookup: fan_in 1, gain 1; torch's
  N(0, 1)), their ``padding_idx`` row 0. An embedding **tied** to an output projection is
  scaled for the projection (gain/sqrt(fan_in)), and embeddings added to it take the same
  std; the row names every use (see ``initscope._tied`` for the trade-off). **xavier** and **lecun** keep their papers'
  gain 1 (scheme="kaiming", mode="fan_avg" is Glorot with activations).
- Normalizations get weight 1, bias 0, reset running statistics; layer biases 0
  (``bias="zeros"``). Parameters left alone are listed in the plan with the reason.
- **residual** ``"auto"`` detects ``x + f(x)`` and then, per branch, zeros the gamma of a
  normalization that ends the branch (ResNets: Goyal et al. 2017, timm's zero_init_last)
  or else scales its last layer by 1/sqrt(number of branches) (pre-LN transformers,
  GPT-2's 1/sqrt(2 n_layer)). ``"fixup"``, ``"zero_last_norm"``, ``"scale_depth"`` and
  ``"none"`` force one choice.

Determinism: each parameter's values come from a generator seeded by a stable hash
(blake2b) of ``(seed, qualified name, shape)``, so adding a layer leaves the values of
the others unchanged (as long as their gains do not change; ``nn.Sequential`` renames
the layers after an insertion) and a model built on ``meta`` and moved with
``to_empty`` gets the same values as one built on the CPU.

All or nothing: every decision, check and generator is made before the first write; the
write phase only fills validated floating-point tensors in place. (A rollback copy of the
whole model would make initialization about 1.8x slower on CPU.) ``torch_default`` runs
the modules' own code, so it snapshots the parameters and restores them on failure.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping

import torch
from torch import nn

from initscope import _counter_init, distributed
from initscope import _validate as check
from initscope._planner import Planner, check_nonlinearity
from initscope._residual import RESIDUAL, Factors, factors
from initscope._state import gc_paused, rollback
from initscope.errors import ArgumentError, ModelError, UnknownOptionError, choices_message
from initscope.graph import discover
from initscope.init import DISTRIBUTIONS, MODES, _fill, delta_orthogonal_
from initscope.initplan import InitPlan, PlanRow
from initscope.layer import SCHEMES
from initscope.moments import ActivationLike

__all__ = ["SCHEMES_ALL", "plan", "initialize", "param_seed"]

SCHEMES_ALL = (*SCHEMES, "torch_default")
_CHOICES = {"residual": RESIDUAL, "bias": ("zeros", "keep"), "convention": ("variance", "torch"),
            "mode": (None, *MODES), "distribution": (None, *DISTRIBUTIONS)}


def param_seed(seed: int, name: str, shape: tuple[int, ...]) -> int:
    """The generator seed of one parameter: a stable 63-bit hash of (seed, name, shape).

    Examples:
        >>> param_seed(0, "0.weight", (8, 4)) == param_seed(0, "0.weight", (8, 4)) != param_seed(1, "0.weight", (8, 4))
        True
    """
    text = f"{int(seed)}\x00{name}\x00{tuple(int(s) for s in shape)}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _check(scheme: str, seed: object, **options: object) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ArgumentError(f"seed must be an int (every parameter's generator derives from it); got {seed!r}")
    if scheme not in SCHEMES_ALL:
        raise UnknownOptionError(choices_message("scheme", scheme, SCHEMES_ALL, "pass one of these"))
    for key, value in options.items():
        if value not in _CHOICES[key]:
            known = [c for c in _CHOICES[key] if c is not None]
            raise UnknownOptionError(choices_message(f"{key} option", value, known, "pass one of these"))


def plan(model: nn.Module, scheme: str = "kaiming", example_input: object = None, *, seed: int = 0,
         mode: str | None = None, distribution: str | None = None, residual: str = "auto", bias: str = "zeros",
         convention: str = "variance",
         nonlinearity: ActivationLike | Mapping[str, ActivationLike] | None = None) -> InitPlan:
    """Decide how to initialize every parameter of ``model``; write nothing.

    Args:
        model: the model. Works on ``meta`` parameters (only shapes are read).
        scheme: kaiming, xavier, lecun, orthogonal, delta_orthogonal (convs; other layers get
            orthogonal) or torch_default (each module's own ``reset_parameters``, seeded per module).
        example_input: an input to run once, to observe the activations (a tuple is unpacked
            as positional arguments, a dict as keyword arguments). Without it, they are
            assumed from ``torch.fx`` or the registration order, with a ``DiscoveryWarning``.
        seed: the seed every parameter's generator derives from (with its name and shape).
        mode: fan_in (default; xavier: fan_avg), fan_out, fan_avg or fan_geo_avg. fan_in takes
            the gain from the activation that produced the layer's input, fan_out from the
            one after the layer (see the module doc).
        distribution: normal, truncated_normal, uniform or orthogonal; default per scheme.
        residual: auto, zero_last_norm, scale_depth, fixup or none (see the module doc).
        bias: "zeros" (layer biases 0) or "keep".
        convention: "variance" (gains from the activation's moments) or "torch" (``calculate_gain``
            of the activation after each layer, as PyTorch code writes it).
        nonlinearity: override discovery: one activation for every layer, or a mapping from
            layer name to activation; its gain is used in both directions.

    Returns:
        An :class:`InitPlan`: one row per parameter block, the untouched parameters, notes.

    Raises:
        UnknownOptionError: an unknown scheme, mode, distribution, residual, bias or convention
            option, or a nonlinearity mapping that names no weight layer.
        ModelError: a model without parameters.
        ForwardError: the model rejected ``example_input`` (names the layer and those completed).

    Examples:
        >>> model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 1))
        >>> p = plan(model, example_input=torch.randn(4, 10))
        >>> [round(p.row(n).gain, 4) for n in ("0.weight", "2.weight")]  # raw input: 1; after ReLU: sqrt(2)
        [1.0, 1.4142]
    """
    check.module(model, "plan")
    _check(scheme, seed, mode=mode, distribution=distribution, residual=residual, bias=bias, convention=convention)
    with gc_paused():
        return _plan(model, scheme, example_input, seed, mode, distribution, residual, bias, convention, nonlinearity)


def _plan(model: nn.Module, scheme: str, example_input: object, seed: int, mode: str | None,
          distribution: str | None, residual: str, bias: str, convention: str,
          nonlinearity: ActivationLike | Mapping[str, ActivationLike] | None) -> InitPlan:
    if not any(True for _ in model.parameters()):
        raise ModelError(f"{type(model).__name__} has no parameters: nothing to initialize; "
                         "build its layers (or run a lazy model once) first")
    check_nonlinearity(model, nonlinearity)
    d_mode, d_dist, _ = SCHEMES.get(scheme, ("-", "-", None))  # torch_default: each module's own
    mode, distribution = mode or d_mode, distribution or d_dist
    graph = None if scheme == "torch_default" else discover(model, example_input)
    residual_factors = factors(graph, residual) if graph else _no_factors(residual)
    planner = Planner(model, graph, scheme, mode, distribution, bias, convention, residual_factors)
    rows, untouched = planner.rows(nonlinearity)
    notes = tuple(dict.fromkeys([*residual_factors.notes, *planner.notes]))
    return InitPlan(scheme, mode, distribution, residual_factors.summary,
                    bias, convention, int(seed), graph.method if graph else "none", tuple(rows), tuple(untouched),
                    planner.running_stats(), notes)


def _no_factors(residual: str) -> Factors:
    """torch_default reproduces the modules' own init: no residual factor."""
    ignored = residual not in ("auto", "none")
    notes = [f"residual={residual!r} is not applied with scheme='torch_default'"] if ignored else []
    return Factors(notes=notes, summary="none (torch_default)")


def initialize(model: nn.Module, scheme: str = "kaiming", example_input: object = None, *, seed: int = 0,
               mode: str | None = None, distribution: str | None = None, residual: str = "auto",
               bias: str = "zeros", convention: str = "variance",
               nonlinearity: ActivationLike | Mapping[str, ActivationLike] | None = None,
               rng: str = "auto") -> InitPlan:
    """Initialize ``model`` in place as :func:`plan` decides, and return the plan.

    Takes the same arguments as :func:`plan`. Normalization layers also get their running
    statistics reset; no other buffer changes. Nothing is written until every row is
    decided and every parameter checked.

    ``rng`` picks the generator: ``"torch"``, a ``torch.Generator`` per parameter (fast; its
    values depend on the device); ``"philox"``, the counter-based Philox4x32-10 of
    :mod:`initscope._philox`, every value a pure function of (seed, name, element index),
    the same on any world size (and device, but for truncated normal's erfinv), each rank
    writing only its shard of a DTensor (on a CPU with the optional C++ kernel about as fast
    as torch's; ~16x slower without a compiler: see ``benchmarks/RESULTS.md``); ``"auto"`` (default), philox
    when the model holds DTensor parameters, else torch.

    Examples:
        >>> from initscope import zoo
        >>> model, x = zoo.build("mlp", depth=4, width=64, batch=256)
        >>> p = initialize(model, "kaiming", example_input=x, seed=0)
        >>> h = model[:-1](x)  # the last hidden layer, after ReLU: E[h^2] = 1/2 by design
        >>> 0.35 < h.pow(2).mean().item() < 0.7
        True
    """
    with gc_paused():  # over plan and writes (see _state.gc_paused)
        result = plan(model, scheme, example_input, seed=seed, mode=mode, distribution=distribution,
                      residual=residual, bias=bias, convention=convention, nonlinearity=nonlinearity)
        result, counter = _rng(model, scheme, result, rng)
        _apply(model, scheme, result, counter)
    return result


def _rng(model: nn.Module, scheme: str, result: InitPlan, rng: str) -> tuple[InitPlan, bool]:
    """Whether the counter-based generator writes, with the plan's notes saying so."""
    if rng not in ("auto", "philox", "torch"):
        raise UnknownOptionError(choices_message("rng", rng, ("auto", "philox", "torch"), "pass one of these"))
    distributed.reshard(model)  # a real discovery forward (the fallback) leaves an FSDP2 root unsharded
    sharded = [n for n, p in model.named_parameters() if distributed.is_dtensor(p)]
    if sharded and distributed.active():
        distributed.agree(distributed.model_signature(list(model.named_parameters())), "initialize")
    if sharded and (rng == "torch" or scheme == "torch_default"):
        raise ArgumentError(f"`{sharded[0]}` is a DTensor: a torch.Generator cannot give values that do not depend "
                            f"on the world size; pass rng='philox' (or 'auto') and a scheme other than torch_default")
    if rng == "torch" or (rng == "auto" and not sharded) or scheme == "torch_default":
        return result, False
    notes = ["values from the counter-based Philox4x32-10 generator: a pure function of (seed, name, element index)"]
    whole = sorted({r.name for r in result.rows if r.distribution in _counter_init.WHOLE_BLOCK and r.name in sharded})
    if whole:
        notes.append(f"{', '.join(whole[:4])}{' ...' if len(whole) > 4 else ''}: orthogonal needs the whole matrix; "
                     "every rank generates it, one parameter block at a time, and keeps its shard")
    return dataclasses.replace(result, notes=(*result.notes, *notes)), True


def _apply(model: nn.Module, scheme: str, result: InitPlan, counter: bool = False) -> None:
    if scheme == "torch_default":
        _reset(model, result)
    elif counter:
        _write_counter(model, result)
    else:
        _write(model, result)
    for name in result.norms:
        model.get_submodule(name).reset_running_stats()


_Job = tuple[torch.Tensor, list[PlanRow], "torch.Generator | None"]


def _jobs(model: nn.Module, result: InitPlan, generators: bool = True) -> list[_Job]:
    """Phase 1: match every row to its tensor and make its generator; nothing is written."""
    params = dict(model.named_parameters())
    grouped: dict[str, list[PlanRow]] = {}
    for r in result.rows:
        grouped.setdefault(r.name, []).append(r)
    jobs = []
    for name, rows in grouped.items():
        p = params.get(name)
        if p is None or tuple(p.shape) != rows[0].shape or not p.is_floating_point():
            raise ModelError(f"`{name}`: the plan does not match the model (parameter "
                             f"{'missing' if p is None else tuple(p.shape)}, planned {rows[0].shape}); make a new plan")
        jobs.append((p, rows, _generator(result.seed, name, p) if generators else None))
    return jobs


def _generator(seed: int, name: str, p: torch.Tensor) -> torch.Generator | None:
    if p.is_meta:
        return None
    return torch.Generator(device=p.device).manual_seed(param_seed(seed, name, tuple(p.shape)))


def _write(model: nn.Module, result: InitPlan) -> None:
    """Phase 2: fill every block in place, in row order, from its parameter's generator."""
    jobs = _jobs(model, result)
    with torch.no_grad():
        for p, rows, gen in jobs:
            for r in rows:
                view = p[r.rows[0]:r.rows[1]] if p.dim() else p
                if r.distribution in ("zeros", "ones"):
                    view.fill_(0.0 if r.distribution == "zeros" else 1.0)
                elif r.distribution == "delta_orthogonal":
                    delta_orthogonal_(view, r.std * math.sqrt(max(view.shape[0], view.shape[1])), gen)
                else:
                    _fill(view, r.std, r.distribution, gen)


def _write_counter(model: nn.Module, result: InitPlan) -> None:
    """Phase 2 with the counter-based generator: each rank fills only its local shards."""
    for p, rows, _ in _jobs(model, result, generators=False):
        _counter_init.write(p, rows[0].name, rows, result.seed)


def _reset(model: nn.Module, result: InitPlan) -> None:
    """torch_default: each module's own reset under a torch RNG seeded by (seed, module name),
    children before parents (as construction runs). Restores every parameter on failure."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    with rollback(model.parameters()):
        for name, m in reversed(list(model.named_modules())):
            reset = getattr(m, "reset_parameters", None)
            if isinstance(m, nn.MultiheadAttention):
                reset = m._reset_parameters  # torch names it privately; it is what __init__ calls
            if not callable(reset) or not any(True for _ in m.parameters(recurse=False)):
                continue
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(param_seed(result.seed, name, ()))
                reset()
