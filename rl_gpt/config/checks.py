"""Plain YAML data checked into the schema's dataclasses: types coerced as a config user writes them
(``1e-3`` is a number), unknown keys and out-of-range values refused with a message naming the key."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

from .schema import FRACTIONS, MINIMUMS, NON_NEGATIVE, POSITIVE, SEEDS, ConfigError

_LARGEST_INT = 2**63 - 1  # what torch and numpy index and seed with


def _nearest(key: str, names: list[str]) -> list[str]:
    """Up to two keys ``key`` may have meant: those it begins (``env`` for ``env_id``), then the closest
    spellings (difflib alone offers ``n_envs`` for ``env``)."""
    begun = [name for name in names if key and name.startswith(key)]
    close = difflib.get_close_matches(key, names, n=2)
    return list(dict.fromkeys(begun + close))[:2]


def build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = _nearest(str(key), names)
            hint = (
                f"; did you mean {' or '.join(prefix + c for c in close)}?"
                if close
                else f"; valid keys: {', '.join(names)}"
            )
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
        least = MINIMUMS.get(f"{prefix}{key}")
        if least is not None and kwargs[key] < least:
            raise ConfigError(f"{prefix}{key}: {value!r} is too small; it counts things and needs at least {least}")
        if f"{prefix}{key}" in NON_NEGATIVE and kwargs[key] < 0:
            raise ConfigError(f"{prefix}{key}: {value!r} is negative; use 0 or more")
        if f"{prefix}{key}" in POSITIVE and not kwargs[key] > 0:
            raise ConfigError(f"{prefix}{key}: {value!r} must be above 0")
        span = FRACTIONS.get(f"{prefix}{key}")
        if span is not None and not (span[0] <= kwargs[key] <= span[1] and (span[2] or kwargs[key] < span[1])):
            upper = f"{span[1]:g}" if span[2] else f"below {span[1]:g}"
            raise ConfigError(f"{prefix}{key}: {value!r} is a fraction: give {span[0]:g} to {upper}")
        if f"{prefix}{key}" in SEEDS and kwargs[key] >= 2**32:
            raise ConfigError(f"{prefix}{key}: {value!r} is too large for a seed; use 0 to {2**32 - 1}")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, f"{key}.")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
                if isinstance(value, list) and typing.get_origin(arg) in (list, Sequence):
                    raise  # a list that fails the list type: what is wrong inside it says more
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not fit {_name(tp)}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(map(repr, args))
            boolean = " (YAML reads yes/no, on/off and true/false as booleans)" if isinstance(value, bool) else ""
            raise ConfigError(f"{key}: {value!r} is not one of {choices}{boolean}")
        return value
    if tp is Any:
        return _numbers_read_as_text(value)
    if origin in (list, Sequence):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        given = value
        number = None if isinstance(value, int) else _as_float(value)
        if number is not None and number.is_integer():
            value = int(number)  # YAML reads 1e5 as a string and 1.0e5 as a float
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > _LARGEST_INT:
                raise ConfigError(f"{key}: {given!r} is out of range; use a number below 2**63")
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = _as_float(value)
        if number is not None and not math.isfinite(number):
            raise ConfigError(f"{key}: {value!r} is not a finite number")
        if number is not None:
            return number
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}{_yaml_boolean_hint(value, key)}")
    raise ConfigError(f"{key}: unsupported config type {_name(tp)}")


def _yaml_boolean_hint(value: Any, key: str) -> str:
    """Why a text field got a boolean: YAML 1.1 reads on/off/yes/no as true/false (`wandb.mode=off` is False)."""
    if not isinstance(value, bool):
        return ""
    return f" (YAML reads yes/no, on/off and true/false as booleans; quote a word meant as text: {key}=\"'WORD'\")"


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _numbers_read_as_text(value: Any) -> Any:
    """``value`` with strings such as ``1e-3`` made numbers, in nested lists and mappings too. YAML 1.1
    reads an exponent without a dot as text, and rl-baselines3-zoo writes learning rates so; SB3 then
    failed mid-training on ``ent_coef: '1e-3'``. Other strings (``lin_0.001``) stay as they are."""
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_numbers_read_as_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers_read_as_text(v) for k, v in value.items()}
    return value


def _as_float(value: Any) -> float | None:
    """A number, or a string YAML left unparsed such as ``1e-3`` (YAML 1.1 wants a dot)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _name(tp: Any) -> str:
    """A type as a config user reads it: ``list[float] | 'data' | null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_name(a) for a in args)
    if origin is Literal:
        return " | ".join(map(repr, args))
    if tp is type(None):
        return "null"
    if origin is not None and args:
        return f"{_name(origin)}[{', '.join(_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))
