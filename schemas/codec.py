"""Avro codec for the mesh's events, on fastavro.

Every value is written in Avro single-object encoding: ``C3 01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's canonical form, then the Avro binary body. The
fingerprint tells a reader which schema wrote the bytes; any writer the codec knows (the current
schemas and their whole history) is resolved against the current reader schema, so old events stay
readable for ever.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from pydantic import ValidationError

from agents.events import EVENT_TYPES, Event
from agents.runtime.errors import Category, PoisonRecord
from schemas import registry

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
_RECENT = 1024  # encodings kept for events encoded again (about a batch's worth)


def schema_fingerprint(schema: Any) -> bytes:
    """The 8 bytes single-object encoding puts after the magic (CRC-64-AVRO, little-endian)."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@dataclass(frozen=True)
class _Writer:
    model: type[Event]
    schema: Any
    reader: Any | None  # None when the writer is the current schema: no resolution needed


class Codec:
    """Encodes events with their current schema; decodes any known writer version."""

    def __init__(
        self,
        models: Iterable[type[Event]] = EVENT_TYPES,
        *,
        extra_writers: Iterable[dict[str, Any]] = (),
    ) -> None:
        self._by_model: dict[type[Event], tuple[bytes, Any]] = {}
        self._writers: dict[bytes, _Writer] = {}
        self._recent: dict[int, tuple[Event, bytes]] = {}
        by_name: dict[str, type[Event]] = {}
        for model in models:
            self._add_model(model)
            by_name[model.schema_name] = model
        for schema in extra_writers:
            self._add_writer(by_name[schema["name"]], schema)

    def _add_model(self, model: type[Event]) -> None:
        short = model.__name__
        reader = fastavro.parse_schema(registry.current(short))
        key = schema_fingerprint(registry.current(short))
        self._by_model[model] = (MAGIC + key, reader)
        self._writers[key] = _Writer(model, reader, None)
        for old in registry.history(short):
            self._add_writer(model, old)

    def _add_writer(self, model: type[Event], schema: dict[str, Any]) -> None:
        key = schema_fingerprint(schema)
        if key not in self._writers:
            reader = self._by_model[model][1]
            self._writers[key] = _Writer(model, fastavro.parse_schema(schema), reader)

    def encode(self, event: Event) -> bytes:
        # Events are immutable, and a worker encodes each outcome twice (the record it sends,
        # the copy kept for replays): the last few encodings are kept, by identity. Holding the
        # event keeps its id from being reused while it is here.
        recent = self._recent.get(id(event))
        if recent is not None and recent[0] is event:
            return recent[1]
        header, schema = self._by_model[type(event)]
        out = io.BytesIO()
        out.write(header)
        fastavro.schemaless_writer(out, schema, event.model_dump())
        data = out.getvalue()
        if len(self._recent) >= _RECENT:
            self._recent.clear()
        self._recent[id(event)] = (event, data)
        return data

    def decode(self, data: bytes | None) -> Event:
        """The event in ``data``; ``PoisonRecord`` says why when there is none."""
        writer = self._writer_of(data)
        assert data is not None
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(data[HEADER_SIZE:]), writer.schema, writer.reader
            )
        except Exception as exc:  # fastavro raises many types on truncated or corrupt bodies
            raise PoisonRecord(Category.UNDECODABLE, f"corrupt Avro body: {exc!r}") from exc
        try:
            return writer.model.model_validate(record)
        except ValidationError as exc:
            raise PoisonRecord(Category.INVALID_EVENT, _short(exc)) from exc

    def model_of(self, data: bytes | None) -> type[Event]:
        """The event type in ``data`` from its header alone, without decoding the body."""
        return self._writer_of(data).model

    def _writer_of(self, data: bytes | None) -> _Writer:
        if not data or len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise PoisonRecord(Category.UNDECODABLE, "not an Avro single-object encoded event")
        writer = self._writers.get(data[2:HEADER_SIZE])
        if writer is None:
            raise PoisonRecord(
                Category.UNKNOWN_SCHEMA,
                f"no known schema has fingerprint {data[2:HEADER_SIZE].hex()}",
            )
        return writer

    def fingerprint_of(self, model: type[Event]) -> bytes:
        return self._by_model[model][0][len(MAGIC) :]


def _short(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{exc.error_count()} invalid field(s), first {where}: {first['msg']}"
