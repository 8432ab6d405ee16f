"""Typed documents to and from JSON: small frozen dataclasses are the schema, and a document
read from outside (the daemon's /status, a worker's counters) is validated against them at the
boundary, once, with the path of what is wrong (``SchemaError: backend.mtu: expected int, got
'x'``). Everything past the boundary reads typed fields, never ``doc.get(..) or {}``.

The field's type says how it is converted; its metadata may say more:

- ``omit_default`` (``optional()``): left out of the JSON while it has its default (an
  optional part of the document: None, "", or an empty container, as declared);
- ``flatten``: a nested dataclass whose fields sit in the parent's object (a store's own
  facts beside the common ones), read back from that same object; or a dict of whatever
  else the object says (a backend's own facts), read back as every key no other field claims.

Keys a document has that its class does not name are ignored (a newer daemon may say more);
a missing key takes the field's default, or is an error when it has none.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")

OMIT_DEFAULT: dict[str, Any] = {"omit_default": True}
FLATTEN: dict[str, Any] = {"flatten": True}

_ADDRESSES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)


class SchemaError(ValueError):
    """A document that does not have the shape its schema says, and where."""


def optional(default: Any = None) -> Any:
    """A field left out of the JSON while it has its default (``default``: None, "", 0 or an
    empty container)."""
    if isinstance(default, (list, dict, tuple)):
        return dataclasses.field(default_factory=lambda: type(default)(), metadata=OMIT_DEFAULT)
    return dataclasses.field(default=default, metadata=OMIT_DEFAULT)


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    if f.default_factory is not dataclasses.MISSING:
        return value == f.default_factory()
    return value is f.default or (f.default is not None and value == f.default)


def to_json(value: Any) -> Any:
    """A dataclass (or anything inside one) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.metadata.get("flatten"):
                out.update(to_json(item))
            elif not (f.metadata.get("omit_default") and _is_default(f, item)):
                out[f.name] = to_json(item)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(to_json(k)): to_json(v) for k, v in value.items()}
    if isinstance(value, _ADDRESSES):
        return str(value)
    return value


def from_json(cls: type[T], data: Any, where: str = "") -> T:
    """``data`` read as a ``cls``, or SchemaError naming the first wrong field."""
    if not isinstance(data, dict):
        raise SchemaError(f"{where or 'document'}: expected an object, got {_show(data)}")
    values = {}
    for f, hint in _fields(cls):
        at = f"{where}.{f.name}" if where else f.name
        if f.metadata.get("flatten") and typing.get_origin(hint) is dict:
            claimed = _claimed(cls)
            values[f.name] = {k: v for k, v in data.items() if k not in claimed}
        elif f.metadata.get("flatten"):
            values[f.name] = from_json(hint, data, where)
        elif f.name in data:
            values[f.name] = _convert(hint, data[f.name], at)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(f"{at}: missing")
    return cls(**values)


_FIELDS: dict[type, tuple[tuple[dataclasses.Field, Any], ...]] = {}


def _fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    """A dataclass's fields with their resolved types (resolved once per class)."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = tuple((f, hints[f.name]) for f in dataclasses.fields(cls) if f.init)
    return _FIELDS[cls]


def _claimed(cls: type) -> frozenset[str]:
    """The keys of an object that ``cls``'s fields read (flattened ones included)."""
    keys: set[str] = set()
    for f, hint in _fields(cls):
        if not f.metadata.get("flatten"):
            keys.add(f.name)
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            keys |= _claimed(hint)
    return frozenset(keys)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except SchemaError as e:
                problems.append(str(e))
        raise SchemaError(
            problems[0] if len(problems) == 1 else f"{where}: {_show(value)} fits no type"
        )
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list, got {_show(value)}")
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object, got {_show(value)}")
        item = args[1] if args else Any
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json(hint, value, where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise SchemaError(f"{where}: {_show(value)} is not a {hint.__name__}") from None
    if hint in _ADDRESSES:
        try:
            return hint(value)
        except (ValueError, TypeError):
            raise SchemaError(f"{where}: {_show(value)} is not an {hint.__name__}") from None
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise SchemaError(f"{where}: expected int, got {_show(value)}")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise SchemaError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
