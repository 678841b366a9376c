"""Avro schema-resolution compatibility, following the rules of the Avro specification.

``can_read(reader, writer)`` lists why data written with ``writer`` cannot be read with ``reader``
(empty when it can). FULL compatibility means both directions hold; FULL_TRANSITIVE means that is
true against every earlier version, so agent roles can be upgraded in any order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_PROMOTIONS = {
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
}


def full_transitive_errors(current: Any, history: Iterable[Any]) -> list[str]:
    """Every reason ``current`` is not FULL compatible with some version in ``history``."""
    errors: list[str] = []
    for version, old in enumerate(history, start=1):
        errors += [f"v{version} cannot read current: {e}" for e in can_read(old, current)]
        errors += [f"current cannot read v{version}: {e}" for e in can_read(current, old)]
    return errors


def can_read(reader: Any, writer: Any) -> list[str]:
    """Why data written with ``writer`` would fail to resolve against ``reader``."""
    return _Checker(_names(reader), _names(writer)).check(reader, writer, "$")


def _names(schema: Any, namespace: str = "", found: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every named type defined in ``schema``, by full name."""
    found = {} if found is None else found
    if isinstance(schema, list):
        for branch in schema:
            _names(branch, namespace, found)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed", "error"):
            full = _full_name(schema, namespace)
            found[full] = schema
            namespace = full.rpartition(".")[0]
        for field in schema.get("fields", []):
            _names(field["type"], namespace, found)
        for key in ("items", "values"):
            if key in schema:
                _names(schema[key], namespace, found)
    return found


def _full_name(schema: Mapping[str, Any], namespace: str) -> str:
    name = str(schema["name"])
    if "." in name:
        return name
    space = schema.get("namespace", namespace)
    return f"{space}.{name}" if space else name


class _Checker:
    def __init__(self, reader_names: dict[str, Any], writer_names: dict[str, Any]) -> None:
        self._reader_names = reader_names
        self._writer_names = writer_names
        self._in_progress: set[tuple[int, int]] = set()

    def check(self, reader: Any, writer: Any, path: str) -> list[str]:
        reader = _deref(reader, self._reader_names)
        writer = _deref(writer, self._writer_names)
        pair = (id(reader), id(writer))
        if pair in self._in_progress:  # recursive types: assume the cycle holds
            return []
        self._in_progress.add(pair)
        try:
            return self._check(reader, writer, path)
        finally:
            self._in_progress.discard(pair)

    def _check(self, reader: Any, writer: Any, path: str) -> list[str]:
        if isinstance(writer, list):
            return [e for branch in writer for e in self.check(reader, branch, path)]
        if isinstance(reader, list):
            if any(not self.check(branch, writer, path) for branch in reader):
                return []
            return [f"{path}: no branch of reader union {_kinds(reader)} reads {_kind(writer)}"]
        reader_kind, writer_kind = _kind(reader), _kind(writer)
        if reader_kind == writer_kind:
            return self._same_kind(reader_kind, reader, writer, path)
        if (writer_kind, reader_kind) in _PROMOTIONS:
            return []
        return [f"{path}: reader {reader_kind} cannot read writer {writer_kind}"]

    def _same_kind(self, kind: str, reader: Any, writer: Any, path: str) -> list[str]:
        if kind in _PRIMITIVES:
            return []
        rules: dict[str, Any] = {
            "record": lambda: self._record(reader, writer, path),
            "error": lambda: self._record(reader, writer, path),
            "enum": lambda: _enum(reader, writer, path),
            "array": lambda: self.check(reader["items"], writer["items"], f"{path}[]"),
            "map": lambda: self.check(reader["values"], writer["values"], f"{path}{{}}"),
            "fixed": lambda: _fixed(reader, writer, path),
        }
        rule = rules.get(kind)
        errors: list[str] = rule() if rule else [f"{path}: unknown type {kind}"]
        return errors

    def _record(self, reader: Any, writer: Any, path: str) -> list[str]:
        errors = _name_errors(reader, writer, path)
        writer_fields = {f["name"]: f for f in writer["fields"]}
        for field in reader["fields"]:
            match = _find_field(field, writer_fields)
            where = f"{path}.{field['name']}"
            if match is not None:
                errors += self.check(field["type"], match["type"], where)
            elif "default" not in field:
                errors.append(f"{where}: reader field missing in writer and has no default")
        return errors


def _find_field(field: Mapping[str, Any], writer_fields: Mapping[str, Any]) -> Any:
    for name in (field["name"], *field.get("aliases", [])):
        if name in writer_fields:
            return writer_fields[name]
    return None


def _enum(reader: Any, writer: Any, path: str) -> list[str]:
    errors = _name_errors(reader, writer, path)
    missing = set(writer["symbols"]) - set(reader["symbols"])
    if missing and "default" not in reader:
        errors.append(f"{path}: reader enum lacks symbols {sorted(missing)} and has no default")
    return errors


def _fixed(reader: Any, writer: Any, path: str) -> list[str]:
    errors = _name_errors(reader, writer, path)
    if reader["size"] != writer["size"]:
        errors.append(f"{path}: fixed size {writer['size']} read as {reader['size']}")
    return errors


def _name_errors(reader: Any, writer: Any, path: str) -> list[str]:
    reader_name = _unqualified(reader["name"])
    accepted = {reader_name, *(_unqualified(a) for a in reader.get("aliases", []))}
    if _unqualified(writer["name"]) in accepted:
        return []
    return [f"{path}: writer type {writer['name']} is not reader type {reader['name']}"]


def _unqualified(name: str) -> str:
    return name.rpartition(".")[2]


def _deref(schema: Any, names: Mapping[str, Any]) -> Any:
    if isinstance(schema, str) and schema not in _PRIMITIVES:
        return names.get(schema, names.get(f"mesh.{schema}", schema))
    if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES:
        return schema["type"]  # logical types resolve like their underlying type
    return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    return str(schema["type"])


def _kinds(union: list[Any]) -> list[str]:
    return [_kind(branch) for branch in union]
