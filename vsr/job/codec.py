"""Dataclasses to JSON and back, driven by their type hints (the plan crosses Ray and disk).

Supports what plans are made of: dataclasses (nested), Fraction (as "n/d"), lists, tuples,
dicts, optional values, str/int/float/bool and `Any` (kept as it is). A field added to one of
those dataclasses needs no code here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from fractions import Fraction
from functools import lru_cache
from typing import Any, TypeVar, Union

T = TypeVar("T")


def to_jsonable(obj: Any) -> Any:
    """A JSON-safe copy of obj: dataclasses become dicts of their fields, Fractions "n/d"."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Fraction):
        return f"{obj.numerator}/{obj.denominator}"
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return sorted(to_jsonable(x) for x in obj)
    return obj


def from_jsonable(cls: type[T], data: Any) -> T:
    """Inverse of to_jsonable for a dataclass type (or any supported type hint)."""
    return _decode(cls, data)


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(hint: Any, data: Any) -> Any:
    if data is None or hint is Any:
        return data
    if dataclasses.is_dataclass(hint):
        hints = _hints(hint)
        kwargs = {f.name: _decode(hints[f.name], data[f.name])
                  for f in dataclasses.fields(hint) if f.init and f.name in data}
        obj = hint(**kwargs)
        for f in dataclasses.fields(hint):  # fields outside __init__ (init=False) are set as stored
            if not f.init and f.name in data:
                object.__setattr__(obj, f.name, _decode(hints[f.name], data[f.name]))
        return obj
    if hint is Fraction:
        return Fraction(data)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return _decode_union(args, data)
    if origin in (list, tuple, set, frozenset):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(_decode(a, x) for a, x in zip(args, data))
        item = args[0] if args else Any
        return origin(_decode(item, x) for x in data)
    if origin is dict:
        key, value = args if args else (Any, Any)
        return {_decode(key, k): _decode(value, v) for k, v in data.items()}
    if hint in (int, float, str, bool):
        return hint(data)
    return data


def _decode_union(args: tuple, data: Any) -> Any:
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:
        return _decode(options[0], data)
    for a in options:  # e.g. int | str: the one the JSON value already is
        if isinstance(a, type) and isinstance(data, a):
            return data
    return data
