"""`Compression`: one registered object per compression method (torchao's config + handler as one
thing). It knows which modules it applies to, how to replace one, what it produces (so a model
compressed before can be made dense again), how to spread a budget over layers, and which
candidates a search should try. `compress_`, `kompakt compress --method`, `--compress NAME:...`
and `kompakt optimize` all read the one registry, so a new method is one file."""

from __future__ import annotations

from dataclasses import fields
from typing import ClassVar

import torch
from torch import nn

from kompakt.errors import ConfigError
from kompakt.registry import Registry

# what `replace` returns: (the twin, its relative weight error), a reason the module cannot be
# converted, or None for a module type the method does not handle
Replacement = tuple[nn.Module, float] | str | None


class Compression:
    """A compression method. Subclasses set the class attributes and override what applies.

    Attributes:
        config_type: the frozen dataclass of the method's options (`--compress NAME:key=value`).
        kind: "layer" (replaces one Linear / Conv2d by a twin: `replace`) or "channels"
            (removes whole filters across the model: `apply_`).
        produces: the module types the method makes; `densify_` turns them back into dense.
    """

    config_type: ClassVar[type]
    kind: ClassVar[str] = "layer"
    produces: ClassVar[tuple[type, ...]] = ()

    def replace(self, module: nn.Module, config: object) -> Replacement:
        """The compressed twin of one module (layer methods; a channel method is routed to
        `apply_` by its `kind`, so reaching this means the method declared the wrong kind)."""
        raise ConfigError(
            f"{type(self).__name__} (kind {self.kind!r}) does not replace single layers: a "
            "layer method implements replace(), a channel method apply_()"
        )

    def apply_(self, model: nn.Module, config: object, example: torch.Tensor) -> list[dict]:
        """Compress the whole `model` in place (channel methods); returns resize records."""
        raise ConfigError(
            f"{type(self).__name__} (kind {self.kind!r}) is not a whole-model method: a channel "
            "method implements apply_(), a layer method replace()"
        )

    def plan(
        self, model: nn.Module, targets: list[tuple[str, nn.Module]], config: object
    ) -> dict[str, object]:
        """Per-layer configs for a budget `config` (e.g. a parameter ratio); {} = `config` for
        every layer."""
        return {}

    def candidates(self, module: nn.Module) -> list[object]:
        """Configs a search should try on `module` (layer methods), or on the model (channel
        methods, `module` is the model); [] = never searched."""
        return []

    def describe(self, config: object) -> str:
        """The `--compress` spelling of `config` (NAME:key=value,...): the first field always (the
        method's main knob, so a label never hides it), the others where they differ from their
        defaults."""
        name = name_of(type(config))
        values = [
            f"{f.name}={getattr(config, f.name)}"
            for i, f in enumerate(fields(config))
            if (i == 0 and getattr(config, f.name) is not None)
            or getattr(config, f.name) != f.default
        ]
        return f"{name}:{','.join(values)}" if values else name


# name -> Compression subclass (methods hold no state: `compression_for` makes an instance)
COMPRESSIONS: Registry[type[Compression]] = Registry("compression")


def name_of(config_type: type) -> str:
    """The registry name of the method whose config type is `config_type`."""
    for name in COMPRESSIONS.names():
        if COMPRESSIONS.get(name).config_type is config_type:
            return name
    valid = ", ".join(COMPRESSIONS.get(n).config_type.__name__ for n in COMPRESSIONS.names())
    raise ConfigError(
        f"config must be one of {valid} (register a Compression in kompakt.compression."
        f"COMPRESSIONS), got {config_type.__name__}"
    )


def compression_for(config: object) -> Compression:
    """The registered method that takes `config`."""
    return COMPRESSIONS.get(name_of(type(config)))()


def parse_compression(text: str) -> object:
    """'tt:ranks=8', 'tt:eps=0.1,ranks=16', 'meta:groups=4,meta_out=2' -> a config object.

    Values become int, float or bool by their spelling; the config's own validation judges them.
    """
    kind, _, rest = text.partition(":")
    if kind not in COMPRESSIONS:
        choices = ", ".join(f"'{n}:'" for n in COMPRESSIONS.names())
        raise ConfigError(f"--compress must start with one of {choices}, got {text!r}")
    values: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--compress expects key=value pairs after 'kind:', got {item!r}")
        values[key.strip()] = _parse_value(value.strip())
    try:
        return COMPRESSIONS.get(kind).config_type(**values)
    except TypeError as error:
        raise ConfigError(f"--compress {text!r}: {error}") from None


def _parse_value(text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def rel_error(new: torch.Tensor, old: torch.Tensor) -> float:
    return (torch.linalg.norm(new - old) / torch.linalg.norm(old).clamp_min(1e-30)).item()
