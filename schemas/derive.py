"""Derive the Avro schema of a pydantic event model.

The ``.avsc`` files are written from these derivations (``mesh schemas export``) and a test fails
when a file and its model disagree, so the field list is declared once, in the model.
"""

from __future__ import annotations

import types
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

NAMESPACE = "mesh"
AvroType = str | dict[str, Any] | list[Any]

_PRIMITIVES: dict[Any, AvroType] = {
    str: "string",
    int: "long",
    float: "double",
    bool: "boolean",
    bytes: "bytes",
    datetime: {"type": "long", "logicalType": "timestamp-micros"},
}


def avro_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The Avro record schema of ``model``, nested records defined inline on first use."""
    schema = _record(model, set())
    assert isinstance(schema, dict)
    return schema


def _record(model: type[BaseModel], seen: set[str]) -> AvroType:
    name = f"{NAMESPACE}.{model.__name__}"
    if name in seen:
        return name
    seen.add(name)
    record: dict[str, Any] = {"type": "record", "name": name}
    if model.__doc__:
        record["doc"] = " ".join(model.__doc__.split())
    record["fields"] = [_field(fname, info, seen) for fname, info in model.model_fields.items()]
    return record


def _field(name: str, info: FieldInfo, seen: set[str]) -> dict[str, Any]:
    field: dict[str, Any] = {"name": name, "type": _type(info.annotation, info, seen)}
    if info.description:
        field["doc"] = info.description
    if info.default is not PydanticUndefined:
        field["default"] = _default(info.default)
    elif info.default_factory is not None and info.default_factory in (dict, list):
        field["default"] = _default(info.default_factory())
    elif isinstance(info.default_factory, type) and issubclass(info.default_factory, BaseModel):
        field["default"] = info.default_factory().model_dump(mode="json")
    return field


def _default(value: Any) -> Any:
    if isinstance(value, dict):
        return value if value else "{}"  # JSON objects travel as strings
    return value


def _type(annotation: Any, info: FieldInfo | None, seen: set[str]) -> AvroType:
    if _is_json(info):
        json: AvroType = {"type": "string", "logicalType": "json"}
        return ["null", json] if type(None) in get_args(annotation) else json
    if get_origin(annotation) is Annotated:  # constraints the model checks are no Avro matter
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return _union(annotation, seen)
    if origin is list:
        return {"type": "array", "items": _type(get_args(annotation)[0], None, seen)}
    if origin is Literal or (isinstance(annotation, type) and issubclass(annotation, StrEnum)):
        return "string"  # an Avro enum would not be FULL_TRANSITIVE: the model checks symbols
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _record(annotation, seen)
    if annotation in _PRIMITIVES:
        return _PRIMITIVES[annotation]
    raise TypeError(f"no Avro mapping for {annotation!r}")


def _union(annotation: Any, seen: set[str]) -> list[Any]:
    members = [a for a in get_args(annotation) if a is not type(None)]
    if len(members) != len(get_args(annotation)) - 1 or len(members) != 1:
        raise TypeError(f"only 'X | None' unions are part of the contract: {annotation!r}")
    return ["null", _type(members[0], None, seen)]


def _is_json(info: FieldInfo | None) -> bool:
    extra = info.json_schema_extra if info is not None else None
    return isinstance(extra, dict) and extra.get("avro_json") is True
