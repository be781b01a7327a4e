"""What the CLI runs on: a model from a SPEC, its input, and the paths it writes.

A SPEC names a model: ``zoo:NAME[?key=value&...]`` (a built-in model, e.g.
``zoo:mlp?depth=50&width=100``; ``batch`` (default 32), ``seed`` and ``size`` shape its
example input), ``path/to/file.py:factory`` or ``package.module:factory``. The factory takes
no arguments and returns a model, or a ``(model, example_input)`` pair. Every failure is an
:class:`~initscope.errors.InitscopeError` that the CLI turns into exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from initscope.errors import ArgumentError, InitscopeError, ModelError

__all__ = ["resolve_spec", "load_input", "writable"]


def _value(text: str) -> Any:
    """A query value: int, float, true/false, else the string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _zoo(spec: str) -> tuple[Any, Any]:
    from initscope import zoo

    name, _, query = spec[4:].partition("?")
    try:
        kwargs = {k: _value(v) for k, v in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))}
    except ValueError:
        raise ArgumentError(f"SPEC {spec!r}: cannot read the options {query!r}; write them as key=value&key=value")
    kwargs.setdefault("batch", 32)
    try:
        return zoo.build(name, **kwargs)
    except TypeError as e:  # an option the factory does not take
        known = [p for p in inspect.signature(zoo.MODELS[name][0]).parameters] + ["batch", "seed", "size"]
        raise ArgumentError(f"SPEC {spec!r}: {e}; zoo:{name} takes {', '.join(known)}") from e


def _factory(spec: str) -> Any:
    from initscope.zoo import MODELS

    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ArgumentError(f"SPEC {spec!r} does not resolve: write zoo:NAME[?key=value], path/to/file.py:factory "
                            f"or package.module:factory; zoo models: {', '.join(MODELS)}")
    from_file = target.endswith(".py") or "/" in target or os.sep in target
    try:
        if from_file:
            if not Path(target).is_file():
                raise ArgumentError(f"SPEC {spec!r}: no file {target!r}; give a path to a .py file")
            loader = importlib.util.spec_from_file_location(f"_initscope_spec_{Path(target).stem}", target)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())
            try:
                module = importlib.import_module(target)
            finally:
                sys.path.remove(os.getcwd())
    except ModuleNotFoundError as e:
        raise ArgumentError(f"SPEC {spec!r}: no module named {e.name!r}; check the name, or give path/to/file.py:factory")
    except InitscopeError:
        raise
    except Exception as e:
        raise ModelError(f"SPEC {spec!r}: importing {target!r} raised {type(e).__name__}: {e}") from e
    if not callable(getattr(module, attr, None)):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")][:12]
        raise ArgumentError(f"SPEC {spec!r}: {target!r} has no callable {attr!r}; it has: {', '.join(names) or 'none'}")
    return getattr(module, attr)


def resolve_spec(spec: str) -> tuple[Any, Any]:
    """(model, example input or None) from a SPEC (see the module docstring).

    Raises:
        ArgumentError: the SPEC does not resolve. ModelError: the factory raised, or returned
            something other than a module or a (module, input) pair.
    """
    import torch

    if spec.startswith("zoo:"):
        return _zoo(spec)
    factory = _factory(spec)
    try:
        made = factory()
    except Exception as e:
        raise ModelError(f"the factory {spec!r} raised {type(e).__name__}: {e}") from e
    model, example = made if isinstance(made, (tuple, list)) and len(made) == 2 else (made, None)
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"the factory {spec!r} returned {type(made).__name__}; return a torch.nn.Module or a "
                         "(module, example_input) pair")
    return model, example


def load_input(args: argparse.Namespace, example: Any, required: bool = True) -> tuple[Any, str]:
    """(input, how it was made) from --input-shape, --input, or the SPEC's example input."""
    import torch

    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.replace("x", ",").split(","))
            if not shape or min(shape) < 1:
                raise ValueError
        except ValueError:
            raise ArgumentError(f"--input-shape {args.input_shape!r}: give positive whole numbers, e.g. 8,3,32,32")
        gen = torch.Generator().manual_seed(args.seed)
        return torch.randn(shape, generator=gen), "x".join(map(str, shape)) + " from --input-shape"
    if args.input:
        try:
            x = torch.load(args.input, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ArgumentError(f"--input {args.input!r}: cannot load it ({type(e).__name__}: {e}); save a tensor, "
                                "tuple or dict with torch.save") from e
        return x, f"{args.input}"
    if example is None:
        if not required:
            return None, "none"
        raise ArgumentError("the SPEC gives no example input (its factory returned only a model); "
                            "pass --input-shape, e.g. 8,3,32,32, or --input file.pt")
    shape = "x".join(map(str, example.shape)) if isinstance(example, torch.Tensor) else type(example).__name__
    return example, f"{shape} from the SPEC"


def writable(path: str) -> None:
    """Raise ArgumentError unless ``path`` can be created or overwritten."""
    p = Path(path)
    if p.is_dir():
        raise ArgumentError(f"output path {path!r} is a directory; give a file name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ArgumentError(f"output path {path!r} is not writable ({parent} is not a writable directory); "
                            "pass another path")
