"""Which modules a call watches or changes: by name, by class, or by a predicate.

:func:`match` is the one resolver, shared by :func:`select_modules` (probe and Recorder)
and :func:`initscope.lsuv.lsuv`'s ``layers=``; each caller keeps its own default and its
own wording for an unknown name.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Union

from torch import nn

from initscope.errors import ModelError, UnknownOptionError, choices_message

__all__ = ["ModuleSelection", "match", "select_modules"]

ModuleSelection = Union[None, str, Sequence[str], type, tuple, Callable[[str, nn.Module], bool]]


def _is_names(selection: object) -> bool:
    return isinstance(selection, str) or (isinstance(selection, (list, tuple, set, frozenset))
                                          and all(isinstance(x, str) for x in selection))


def _is_classes(selection: object) -> bool:
    return isinstance(selection, type) or (isinstance(selection, tuple)
                                           and all(isinstance(x, type) for x in selection))


def match(named: Mapping[str, nn.Module], selection: ModuleSelection, unknown: Callable[[str], Exception],
          arg: str = "modules") -> list[str]:
    """The names in ``named`` that ``selection`` chooses, in order (duplicates dropped).

    ``selection`` is a name or a collection of names (``unknown(name)`` is raised for the
    first one not in ``named``), a module class or tuple of classes, or a predicate
    ``fn(name, module) -> bool``. ``arg`` names the argument in the TypeError for anything else.
    """
    if _is_names(selection):
        wanted = list(dict.fromkeys([selection] if isinstance(selection, str) else selection))
        for name in wanted:
            if name not in named:
                raise unknown(name)
        return wanted
    if _is_classes(selection):
        return [n for n, m in named.items() if isinstance(m, selection)]
    if callable(selection):
        return [n for n, m in named.items() if selection(n, m)]
    raise TypeError(f"{arg} must be None, names, module classes or a predicate fn(name, module); "
                    f"got {type(selection).__name__}")


def _watched_by_default(module: nn.Module) -> bool:
    """A leaf, or a module with parameters of its own (such as ``nn.MultiheadAttention``)."""
    return next(module.children(), None) is None or next(module.parameters(recurse=False), None) is not None


def _unknown_module(named: Mapping[str, nn.Module]) -> Callable[[str], Exception]:
    known = [n for n in named if n]
    return lambda name: UnknownOptionError(choices_message(
        "module name", name, known[:12] + ["..."] * (len(known) > 12), "pass names as listed by model.named_modules()"))


def select_modules(model: nn.Module, modules: ModuleSelection = None) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs to watch, in registration order.

    Args:
        model: the network.
        modules: None for every leaf module plus modules with parameters of their own (such
            as ``nn.MultiheadAttention``); a name or list of names from ``named_modules()``;
            a module class or tuple of classes; or a predicate ``fn(name, module) -> bool``.

    Raises:
        UnknownOptionError: a name that is not in the model.
        ModelError: the selection is empty.

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> [n for n, _ in select_modules(net, nn.ReLU)]
        ['1']
    """
    named = dict(model.named_modules())
    if modules is None:
        chosen = [n for n, m in named.items() if _watched_by_default(m)]
    else:
        chosen = match(named, modules, _unknown_module(named))
    if not chosen:
        raise ModelError(f"the module selection {modules!r} matches no module of {type(model).__name__}; "
                         "pass None to watch every leaf module")
    return [(n, named[n]) for n in chosen]
