"""One source for every option: a frozen `*Config` dataclass is the CLI options, the TOML keys
and the library call at once.

Fields are declared with `opt(default, help)`; `Literal[...]` types become choices, `bool`
becomes a flag (or `--x/--no-x` when it defaults to True or None), `X | None` takes X. The
command decorates itself with `@click_options(Config)` and builds the config with
`config_from(ctx, Config)`: CLI values given explicitly, over the TOML file's `[section]` keys,
over the dataclass defaults; unknown TOML keys are refused with the valid ones listed, and the
dataclass's `__post_init__` validates the result.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from kompakt.errors import ConfigError

_MISSING = dataclasses.MISSING


def opt(
    default: Any = _MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    cli: bool = True,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with its CLI help.

    Args:
        default: the default (or use `factory` for mutable ones).
        help: the option's help line.
        cli: False keeps it out of the generated CLI options (TOML / API only).
        parse: turns the CLI string into the value (for types click cannot express).
        aliases: other spellings of the option (e.g. "-o" for an output).
    """
    metadata = {"help": help, "cli": cli, "parse": parse, "metavar": metavar, "aliases": aliases}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _default(field: dataclasses.Field) -> Any:
    if field.default is not _MISSING:
        return field.default
    if field.default_factory is not _MISSING:
        return field.default_factory()
    return None


def click_options(cls: type, skip: tuple[str, ...] = ()) -> Callable:
    """A decorator adding one click option per field of `cls` (in field order)."""
    import click

    hints = _hints(cls)
    decorators = []
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if field.name in skip or not meta.get("cli", True):
            continue
        kind = _unwrap_optional(hints[field.name])
        default = _default(field)
        flag = "--" + field.name.replace("_", "-")
        names = [*meta.get("aliases", ()), flag, field.name]
        kwargs: dict[str, Any] = {"help": meta.get("help", ""), "default": default}
        if kind is bool:
            if default is False:
                decorators.append(click.option(flag, is_flag=True, help=kwargs["help"]))
                continue
            decorators.append(
                click.option(
                    f"{flag}/--no-{field.name.replace('_', '-')}",
                    **kwargs,
                    show_default=default is not None,
                )
            )
            continue
        if meta.get("parse") is not None:
            kwargs["type"] = str
            if isinstance(default, tuple | list):  # shown and parsed as "1,8,32"
                default = ",".join(str(v) for v in default)
            kwargs["default"] = None if default is None else str(default)
        elif typing.get_origin(kind) is Literal:
            kwargs["type"] = click.Choice([str(v) for v in typing.get_args(kind)])
        elif kind in (int, float, str):
            kwargs["type"] = kind
        else:
            continue  # dicts, lists, tuples: TOML / API only
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        decorators.append(click.option(*names, show_default=default is not None, **kwargs))

    def apply(command: Callable) -> Callable:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def underscored(values: dict) -> dict:
    """TOML keys may be spelled like the CLI options (calib-samples) or the fields
    (calib_samples); both mean the same."""
    return {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in values.items()}


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def check_keys(values: dict, cls: type | tuple[type, ...], where: str, extra: set = frozenset()):
    """Refuse keys that no field of `cls` (or `extra`) takes."""
    classes = cls if isinstance(cls, tuple) else (cls,)
    valid = set(extra).union(*(field_names(c) for c in classes))
    unknown = set(values) - valid
    if unknown:
        raise ConfigError(f"unknown keys in {where}: {sorted(unknown)}; valid: {sorted(valid)}")


def build(cls: type, values: dict, where: str) -> Any:
    """`cls(**values)` with unknown keys and wrong types refused in one line."""
    check_keys(values, cls, where)
    hints = _hints(cls)
    for name, value in values.items():
        _check_type(name, value, hints[name], where)
    try:
        return cls(**values)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None


def _check_type(name: str, value: Any, kind: Any, where: str) -> None:
    """Refuse a TOML value of the wrong kind (a string where a number goes, ...)."""
    if value is None:
        return
    kind = _unwrap_optional(kind)
    origin = typing.get_origin(kind)
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise ConfigError(
                f"{where}: {name} must be one of {typing.get_args(kind)}, got {value!r}"
            )
        return
    expected: tuple = ()
    if kind is bool:
        expected = (bool,)
    elif kind is int:
        expected = (int,)
    elif kind is float:
        expected = (int, float)
    elif kind is str:
        expected = (str,)
    if expected and (
        not isinstance(value, expected) or (kind is not bool and isinstance(value, bool))
    ):
        raise ConfigError(
            f"{where}: {name} must be a {kind.__name__}, got {type(value).__name__} {value!r}"
        )


def config_from(ctx: Any, cls: type | tuple[type, ...], section: str) -> Any:
    """The config(s) for a click command: explicit CLI values > TOML `[section]` > defaults.

    With a tuple of classes the section's keys are shared among them and a tuple of configs
    comes back (e.g. DeployConfig and BuildOptions for `kompakt deploy`).
    """
    from click.core import ParameterSource

    classes = cls if isinstance(cls, tuple) else (cls,)
    params = dict(ctx.params)
    path = params.get("config")
    file_values: dict = {}
    if path:
        from kompakt._io import load_toml

        loaded = load_toml(path)
        file_values = underscored(loaded.get(section, loaded))
    check_keys(file_values, classes, f"the config file's [{section}]")
    configs = []
    for one in classes:
        names = field_names(one)
        values = {k: v for k, v in file_values.items() if k in names}
        parsers = {f.name: f.metadata.get("parse") for f in dataclasses.fields(one)}
        for name in names:
            if name not in params:
                continue
            explicit = ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
            if explicit or name not in values:
                value = params[name]
                if isinstance(value, str) and parsers.get(name):
                    value = parsers[name](value)
                values[name] = value
        configs.append(build(one, values, f"{section} options"))
    return tuple(configs) if isinstance(cls, tuple) else configs[0]
