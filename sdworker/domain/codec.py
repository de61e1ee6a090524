"""Frozen dataclasses to JSON-able values and back, driven by their type hints.

Every store keeps a job's request as JSON (memory keeps the objects, SQLite and Redis the text), so
a new field of ``GenerationRequest`` (an int, a string, a tuple of small dataclasses, an image)
travels through every store without any store naming it. Bytes become base64 text; enums their
value; tuples lists. A field missing from stored data takes its default, so jobs stored before a field
existed still load; an unknown key is ignored (a newer node wrote it).
"""

from __future__ import annotations

import base64
import dataclasses
import types
import typing
from enum import Enum
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


def to_json(value: Any) -> Any:
    """A JSON-able form of ``value`` (dataclasses, enums, bytes, tuples and plain values)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    raise TypeError(f"cannot store a {type(value).__name__} as JSON")


def from_json(cls: type[T], data: Any) -> T:
    """The inverse of ``to_json`` for dataclass ``cls``."""
    return typing.cast(T, _decode(cls, data))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(hint: Any, data: Any) -> Any:
    if data is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if bytes in options:  # bytes | str: stored forms are always the checked bytes, as base64
            return base64.b64decode(data)
        return _decode(options[0], data)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], item) for item in data)
        return tuple(_decode(arg, item) for arg, item in zip(args, data, strict=True))
    if origin is dict:
        _, value_hint = typing.get_args(hint)
        return {key: _decode(value_hint, item) for key, item in data.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = _hints(hint)
        names = {f.name for f in dataclasses.fields(hint) if f.init}
        return hint(**{key: _decode(hints[key], value) for key, value in data.items() if key in names})
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(data)
    if hint is bytes:
        return base64.b64decode(data)
    if hint is float:
        return float(data)
    return data
