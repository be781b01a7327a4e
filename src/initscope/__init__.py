"""initscope: initialize networks correctly and see what happens inside them.

Only torch and numpy load at import time; report, plotting and CLI libraries load
inside the functions that use them.

Examples:
    >>> import initscope
    >>> round(initscope.gain("relu") ** 2, 12)
    2.0
"""
from __future__ import annotations

from initscope import experiments, init, theory, zoo
from initscope.errors import (
    ActivationError,
    DiscoveryWarning,
    ArgumentError,
    ArgumentTypeError,
    ForwardError,
    InitscopeError,
    LayerError,
    LossError,
    ModelError,
    ShapeError,
    UnknownActivationError,
    UnknownOptionError,
)
from initscope.fans import Fan, FanBlock, fan, tensor_fans
from initscope.graph import Graph, discover
from initscope.initialize import initialize, plan
from initscope.initplan import InitPlan, PlanRow, Untouched
from initscope.layer import BlockInit, LayerInit, init_layer_
from initscope.diagnose import Finding, Thresholds, diagnose, diagnose_run
from initscope.lsuv import LsuvLayer, LsuvReport, lsuv
from initscope.moments import Moments, gain, moments
from initscope.oprules import OpCall, register_rule
from initscope.probe import Trace, probe
from initscope.recorder import Recorder
from initscope.stats import Stats, StatsAccumulator, tensor_stats
from initscope.theory import (
    Band,
    Propagation,
    chi1,
    correlation_map,
    critical_sigma_w2,
    depth_scale,
    finite_width_band,
    fixed_point,
    propagate,
)

__version__ = "0.1.0"

# --- report renderers (issue 14): the report package registers the HTML of every result kind
# (initscope._render); it loads only the standard library beyond what is already imported.
from initscope import report as _report  # noqa: E402,F401

__all__ = [
    "__version__",
    # math core
    "moments", "Moments", "gain", "fan", "Fan", "FanBlock", "tensor_fans",
    # initializers
    "init", "init_layer_", "LayerInit", "BlockInit", "zoo",
    # whole model
    "initialize", "plan", "InitPlan", "PlanRow", "Untouched", "discover", "Graph",
    "register_rule", "OpCall",  # moment rules for ops between layers (issue 12)
    "lsuv", "LsuvReport", "LsuvLayer",
    # observation
    "probe", "Trace", "Stats", "StatsAccumulator", "tensor_stats", "Finding", "Thresholds", "diagnose",
    "diagnose_run", "Recorder",
    # theory and experiments
    "theory", "propagate", "Propagation", "fixed_point", "chi1", "correlation_map", "depth_scale",
    "critical_sigma_w2", "finite_width_band", "Band", "experiments",
    # errors
    "InitscopeError", "UnknownActivationError", "ActivationError", "UnknownOptionError", "ArgumentError",
    "ArgumentTypeError",
    "ShapeError", "LayerError", "ModelError", "ForwardError", "LossError", "DiscoveryWarning",
]
