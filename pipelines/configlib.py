"""Typed config machinery: frozen dataclasses <-> plain dicts / YAML, and `a.b=c` overrides.

Every config in avtime is a frozen, keyword-only dataclass kept beside its component. This module
turns nested dicts (from YAML or Ray's `train_loop_config`) into those dataclasses, checking every
key and value, and applies `--set a.b=c` overrides. Errors name the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from avtime.pipelines.errors import UsageError

T = TypeVar("T")


class ConfigError(UsageError):
    """A bad config key or value. The message names the key and what is allowed. Exit 2."""

    prefix = "config error: "


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` to type `tp`, or raise ConfigError naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} does not fit {tp}: {'; '.join(errors)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: {value!r} is not a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not an integer")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: {value!r} is not an integer") from None
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise ConfigError(f"{key}: {value!r} is not an integer")
        return int(as_float)
    if tp is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: {value!r} is not a finite number")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys and bad values raise ConfigError."""
    hints = get_type_hints(cls)
    fields = _fields(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; valid keys under {prefix or 'the root'}: "
            f"{sorted(fields)}"
        )
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists) of a dataclass config; YAML- and JSON-safe."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    out = plain(cfg)
    assert isinstance(out, dict)
    return out


def flatten(cfg: Any) -> dict[str, Any]:
    """`{"a.b": value}` for every leaf of a config (for MLflow params and diffs)."""
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(to_dict(cfg), "")
    return out


def apply_override(cfg: T, assignment: str) -> T:
    """Return `cfg` with one `a.b=c` assignment applied (the value is parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    path, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    return _replace_path(cfg, path.strip().split("."), value, path.strip())


def _replace_path(cfg: Any, parts: list[str], value: Any, full: str) -> Any:
    fields = _fields(type(cfg))
    head = parts[0]
    if head not in fields:
        done = full[: len(full) - len(".".join(parts))].rstrip(".")
        raise ConfigError(
            f"unknown key {full}; valid keys under {done or 'the root'}: {sorted(fields)}"
        )
    hints = get_type_hints(type(cfg))
    if len(parts) == 1:
        new = _coerce(value, hints[head], full)
    else:
        child = getattr(cfg, head)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{full}: {head} is a value, not a section")
        new = _replace_path(child, parts[1:], value, full)
    try:
        return dataclasses.replace(cfg, **{head: new})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{full}: {exc}") from None


def apply_overrides(cfg: T, assignments: list[str] | tuple[str, ...]) -> T:
    """Apply several `a.b=c` overrides in order."""
    for a in assignments:
        cfg = apply_override(cfg, a)
    return cfg


def dump_yaml(cfg: Any) -> str:
    """YAML text of a config; `load_yaml` reads it back to an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of a YAML file; ConfigError (one line, with the position) when the
    file cannot be read, does not parse, or holds something else."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML does not parse{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_yaml(cls: type[T], path: str | Path, base: T | None = None) -> T:
    """Load a YAML file into `cls`. With `base`, the file's keys override `base`'s values."""
    data = read_yaml(path)
    if base is None:
        return from_dict(cls, data)
    merged = _merge(to_dict(base), data)
    return from_dict(cls, merged)


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def check_choice(key: str, value: Any, choices: typing.Iterable[Any]) -> None:
    """Raise ConfigError unless `value` is one of `choices`; for use in `__post_init__`."""
    allowed = list(choices)
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {allowed}")
