"""Dataclass configs read from YAML: unknown or mistyped fields fail with the field named."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from envs.robots import PROJECT_ASSETS

T = TypeVar("T")


def config_from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from `data`, checking names and basic types before anything runs.

    Raises:
        ValueError: an unknown field (naming the allowed ones) or a value of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where} has unknown fields {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        values[name] = _coerce(value, hints[name], f"{where}.{name}")
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ValueError:
                continue
        raise ValueError(f"{where} must be {hint}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, where)
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain dict of a (nested) dataclass config, tuples as lists (YAML/JSON-ready)."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def config_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of dataclass `cls` that has one, as `config_to_dict` writes it
    (built without `cls`'s checks, which a required field's empty default may fail)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return {name: config_to_dict(value) if dataclasses.is_dataclass(value)
            else list(value) if isinstance(value, tuple) else value for name, value in out.items()}


def resolve_config_paths(data: dict[str, Any], config_file: str | Path, fields: tuple[str, ...]) -> dict[str, Any]:
    """`data` with each of `fields` that holds a relative path made absolute: against the config
    file's folder first, then the project's `assets/`, whichever exists (so a shipped config runs
    from any directory). A path found in neither is left as it is, for the config's own check to
    name. Absolute paths and non-path values (e.g. `init: scratch`) are left alone."""
    out = dict(data)
    for name in fields:
        value = out.get(name)
        if not isinstance(value, str) or Path(value).is_absolute():
            continue
        for base in (Path(config_file).resolve().parent, PROJECT_ASSETS):
            if (base / value).exists():
                out[name] = str((base / value).resolve())
                break
    return out
