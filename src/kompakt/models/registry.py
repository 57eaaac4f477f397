"""The model registry and `build_model`.

A model is a registered name (`kompakt list models`) or the user's own code: `path/to/file.py:
factory` or `package.module:Class` (a callable returning an nn.Module). Checkpoints record that
source, so every command reloads the model the way it was built; the code is loaded only from
what the user named on the command line or in a checkpoint they pass, never from a bundle.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from kompakt.errors import ConfigError
from kompakt.registry import Registry

MODELS: Registry = Registry("model")
SIZES = ("num_classes", "in_channels", "image_size")


def is_user_model(name: str) -> bool:
    """A `file.py:factory` or `package.module:attr` source rather than a registered name."""
    return ":" in name


def canonical_source(name: str) -> str:
    """A user model's source as a checkpoint records it: a file path made absolute (so the run
    reloads from any directory); registered names and module paths unchanged."""
    if not is_user_model(name):
        return name
    where, _, attr = name.rpartition(":")
    if where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{attr}"
    return name


def _user_builder(name: str) -> Callable[..., nn.Module]:
    where, _, attr = name.rpartition(":")
    if not where or not attr:
        raise ConfigError(f"model {name!r}: expected path/to/file.py:factory or module:factory")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise ConfigError(f"model {name!r}: {path} does not exist")
        key = "kompakt_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module  # dataclasses and pickling look the module up by name
            try:
                spec.loader.exec_module(module)
            except Exception as error:
                del sys.modules[key]
                raise ConfigError(f"model {name!r}: importing {path} failed: {error}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as error:
            raise ConfigError(f"model {name!r}: cannot import {where} ({error})") from None
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise ConfigError(f"model {name!r}: {where} has no callable {attr!r}")
    return builder


def _accepted(builder: Callable, sizes: dict, kwargs: dict) -> dict:
    """The sizes the builder takes by name (all, if it takes **kwargs), and the user's kwargs:
    a user's `Net(num_classes=10)` need not accept image_size."""
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return {**sizes, **kwargs}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return {**sizes, **kwargs}
    names = {p.name for p in parameters}
    return {**{k: v for k, v in sizes.items() if k in names}, **kwargs}


def build_model(
    name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: object
) -> nn.Module:
    """Build a model for inputs (N, in_channels, image_size, image_size).

    Raises:
        NotFoundError: for an unknown registered name (lists the valid ones).
        ConfigError: for kwargs the builder does not take, sizes it cannot handle, user code
            that does not import or does not return an nn.Module.
    """
    sizes = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    if is_user_model(name):
        builder = _user_builder(name)
        arguments = _accepted(builder, sizes, kwargs)
    else:
        builder, arguments = MODELS.get(name), {**sizes, **kwargs}
    try:
        model = builder(**arguments)
    except TypeError as error:
        raise ConfigError(f"model {name!r}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not an nn.Module")
    model.kompakt_input_shape = (in_channels, image_size, image_size)  # for shape-aware tools
    return model
