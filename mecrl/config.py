"""Typed configuration: dataclasses built from plain dicts, YAML or TOML.

Every config in mecrl is a frozen dataclass whose fields carry a docstring
comment. :func:`from_dict` builds one from nested plain data, rejecting an
unknown key or a value of the wrong type with a :class:`ConfigError` that names
the dotted path of the field (``services.0.state_mb``) and, for unknown keys,
the valid ones. Dataclasses validate their values in ``__post_init__`` by
calling :func:`check`, so the same rules hold for configs written in Python.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import numpy as np
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid.

    Args:
        field: Dotted path of the offending field.
        message: What is wrong with it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field or 'config'}: {message}")


def check(condition: bool, field: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``field`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(field, message)


def is_number(value: Any) -> bool:
    """Return whether ``value`` is a finite real number (not a bool)."""
    is_real = isinstance(value, int | float | np.integer | np.floating)
    return is_real and not isinstance(value, bool) and math.isfinite(value)


def check_positive(field: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number > 0."""
    check(
        is_number(value) and value > 0,
        field,
        f"must be a finite number > 0, got {value!r}",
    )


def check_non_negative(field: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number >= 0."""
    check(
        is_number(value) and value >= 0,
        field,
        f"must be a finite number >= 0, got {value!r}",
    )


def check_integer(field: str, value: Any, *, minimum: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer >= ``minimum``."""
    check(
        isinstance(value, int | np.integer) and not isinstance(value, bool),
        field,
        f"must be an integer, got {value!r}",
    )
    check(value >= minimum, field, f"must be at least {minimum}, got {value}")


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a dict.

    Raises:
        ConfigError: If the suffix is unknown or the file is not a mapping.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"invalid TOML: {exc}") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"invalid YAML: {exc}") from None
    else:
        raise ConfigError(str(path), "config files must end in .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise ConfigError(str(path), "the file must hold a mapping at top level")
    return data


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build the dataclass ``cls`` from plain nested data.

    Args:
        cls: A dataclass type whose fields have type hints.
        data: A mapping of field names to values (nested mappings for nested
            dataclasses).
        path: Dotted prefix used in error messages.

    Raises:
        ConfigError: On an unknown key, a missing required field, a value of
            the wrong type, or a value rejected by the dataclass' own checks.
    """
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"{where}{unknown[0]}",
            f"unknown key; valid keys are: {', '.join(sorted(fields))}",
        )
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _convert(hints[name], value, _join(path, name))
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if path and not exc.field.startswith(path):
            raise ConfigError(
                _join(path, exc.field), str(exc).split(": ", 1)[1]
            ) from None
        raise
    except TypeError as exc:
        raise ConfigError(path, str(exc)) from None


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``changes`` applied; mappings merge key by key."""
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def to_dict(config: Any) -> Any:
    """Return plain data (dicts, lists, scalars) for a config dataclass."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {
            f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)
        }
    if isinstance(config, tuple | list):
        return [to_dict(item) for item in config]
    if isinstance(config, dict):
        return {key: to_dict(value) for key, value in config.items()}
    return config


def without_defaults(config: Any) -> Any:
    """Return :func:`to_dict` of ``config`` leaving out fields at their defaults.

    A field that a later version adds, with a default that keeps the earlier
    behaviour, then leaves this form of existing configs unchanged.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = {}
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            factory = f.default_factory
            if factory is not dataclasses.MISSING and value == factory():
                continue
            data[f.name] = without_defaults(value)
        return data
    if isinstance(config, tuple | list):
        return [without_defaults(item) for item in config]
    if isinstance(config, dict):
        return {key: without_defaults(value) for key, value in config.items()}
    return config


def _join(path: str, name: str | int) -> str:
    return f"{path}.{name}" if path else str(name)


def _convert(hint: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the type ``hint``, converting where lossless."""
    origin = get_origin(hint)
    args = get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(args, value, path)
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(path, f"must be one of {choices}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):  # type: ignore[arg-type]
            return value
        return from_dict(hint, value, path)  # type: ignore[arg-type]
    if origin in (tuple, list):
        return _convert_sequence(origin, args, value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        key_hint, value_hint = args
        return {
            _convert(key_hint, k, path): _convert(value_hint, v, _join(path, k))
            for k, v in value.items()
        }
    return _convert_scalar(hint, value, path)


def _convert_union(args: tuple[Any, ...], value: Any, path: str) -> Any:
    if value is None and type(None) in args:
        return None
    options = [arg for arg in args if arg is not type(None)]
    if len(options) == 1:
        # an optional field: its own error, with its nested path, is clearest
        return _convert(options[0], value, path)
    errors = []
    for arg in options:
        try:
            return _convert(arg, value, path)
        except ConfigError as exc:
            errors.append(str(exc).split(": ", 1)[-1])
    raise ConfigError(path, " or ".join(errors))


def _convert_sequence(origin: Any, args: tuple[Any, ...], value: Any, path: str) -> Any:
    if not isinstance(value, list | tuple):
        raise ConfigError(path, f"expected a list, got {type(value).__name__}")
    if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
        if len(value) != len(args):
            raise ConfigError(path, f"expected {len(args)} items, got {len(value)}")
        return tuple(
            _convert(a, v, _join(path, i))
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    item_hint = args[0] if args else Any
    items = [_convert(item_hint, v, _join(path, i)) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1.0e6" (no sign in the exponent) as a string
            value = _float_text(value, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(path, f"expected {hint.__name__}, got {value!r}")
    return value


def _float_text(text: str, path: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(path, f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ConfigError(path, f"expected a finite number, got {text!r}")
    return value
