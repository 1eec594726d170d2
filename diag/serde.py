"""Typed records: dataclasses that read and write plain JSON dicts by their field types, and
describe themselves as JSON Schema.

A record's fields carry a ``doc`` (the schema's description) and an ``omit`` rule ("none": not
written while None; "empty": not while None/{}/[]). Reading is lenient: a missing key takes its
default, so does a null where the type does not allow None, and an unknown key is kept and
written back unchanged.

>>> from dataclasses import dataclass
>>> @dataclass
... class Point(Record):
...     x: int = record_field(0, "across")
...     label: str | None = record_field(None, "a name", omit="none")
>>> Point.from_dict({"x": 3, "extra": True}).to_dict()
{'x': 3, 'extra': True}
>>> json_schema(Point)["properties"]["x"]
{'type': 'integer', 'description': 'across'}
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import field
from typing import Any, Union


def record_field(default=None, doc: str = "", omit: str | None = None, factory=None):
    """A record field. omit: "none" = not written while None; "empty" = not while None/{}/[]."""
    meta = {"doc": doc, "omit": omit}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class Record:
    """Base of every record: ``from_dict``/``to_dict`` driven by the dataclass's field types.

    _sometimes: fields an ``_omitted`` rule may leave out (so the schema does not require them);
    _derived: keys ``to_dict`` adds from other fields (name -> description).
    """

    _sometimes: typing.ClassVar[frozenset[str]] = frozenset()
    _derived: typing.ClassVar[dict[str, str]] = {}

    @classmethod
    def from_dict(cls, data: typing.Mapping[str, Any]):
        hints = _field_types(cls)
        known = hints.keys()
        # a null where the type does not allow None (an older or hand-made file): the default
        values = {
            k: _load(hints[k], v)
            for k, v in data.items()
            if k in known and (v is not None or _nullable(hints[k]))
        }
        record = cls(**values)
        object.__setattr__(record, "_unknown", {k: v for k, v in data.items() if k not in known})
        return record

    @classmethod
    def coerce(cls, value):
        """``value`` itself when it is already this record, else :meth:`from_dict` of it."""
        if value is None or isinstance(value, cls):
            return value
        return cls.from_dict(value)

    def to_dict(self) -> dict:
        out = {}
        omitted = self._omitted()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            rule = f.metadata.get("omit")
            if f.name in omitted or (rule and value is None):
                continue
            if rule == "empty" and value in ({}, []):
                continue
            out[f.name] = _dump(value)
        out.update(getattr(self, "_unknown", {}))
        return out

    def _omitted(self) -> set[str]:
        """Fields left out of this record's JSON (a rule that depends on other fields)."""
        return set()


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    """Each dataclass field's resolved type (resolved once per class)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _nullable(hint) -> bool:
    return hint is Any or type(None) in typing.get_args(hint)


def _load(hint, value):
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _load(inner[0], value) if len(inner) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value) if isinstance(value, dict) else value
    if origin in (list, tuple) and isinstance(value, list):
        item = args[0] if args else Any
        loaded = [_load(item, v) for v in value]
        return tuple(loaded) if origin is tuple else loaded
    if origin is dict and isinstance(value, dict):
        item = args[1] if len(args) == 2 else Any
        return {k: _load(item, v) for k, v in value.items()}
    return value


def _dump(value):
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def json_schema(root: type[Record], title: str = "") -> dict:
    """The JSON Schema (draft 2020-12) of ``root`` and every record it holds."""
    defs: dict[str, dict] = {}

    def of(hint) -> dict:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint in _SIMPLE:
            return {"type": _SIMPLE[hint]}
        if hint is Any:
            return {}
        if origin in (Union, types.UnionType):
            parts = [of(a) for a in args]
            if all(list(p) == ["type"] for p in parts):
                return {"type": [p["type"] for p in parts]}
            return {"anyOf": parts}
        if isinstance(hint, type) and issubclass(hint, Record):
            if hint.__name__ not in defs:
                defs[hint.__name__] = {}  # placeholder against recursion
                defs[hint.__name__] = record_schema(hint)
            return {"$ref": f"#/$defs/{hint.__name__}"}
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": of(args[0])}
            return {"type": "array", "prefixItems": [of(a) for a in args], "items": False}
        if origin is list:
            return {"type": "array", "items": of(args[0]) if args else {}}
        if origin is dict:
            return {"type": "object", "additionalProperties": of(args[1]) if args else {}}
        raise TypeError(f"no JSON Schema for {hint!r}")

    def record_schema(cls) -> dict:
        hints = typing.get_type_hints(cls)
        props, required = {}, []
        for f in dataclasses.fields(cls):
            props[f.name] = {**of(hints[f.name]), "description": f.metadata.get("doc", "")}
            if not f.metadata.get("omit") and f.name not in cls._sometimes:
                required.append(f.name)
        for name, doc in cls._derived.items():
            props[name] = {"type": "string", "description": doc}
            required.append(name)
        doc = (cls.__doc__ or cls.__name__).strip().split("\n\n")[0]
        return {
            "type": "object",
            "description": " ".join(doc.split()),
            "properties": props,
            "required": required,
        }

    body = record_schema(root)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title or root.__name__,
        **body,
        "$defs": dict(sorted(defs.items())),
    }
