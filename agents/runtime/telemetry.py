"""Tracing: one trace per goal, carried across Kafka hops in W3C ``traceparent`` headers.

Spans go to OTLP when the standard ``OTEL_EXPORTER_OTLP_*`` variables are set, and otherwise to a
local JSON-lines file (``MESH_TRACE_FILE``, default ``.mesh/traces.jsonl``), which rotates at
``MESH_TRACE_MAX_MB`` (default 100) keeping ``TRACE_FILES_KEPT`` older files. Only the entry
points (CLI, tests) install a provider; library code just asks for a tracer.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from agents import __version__, jsontext
from agents.runtime.errors import ConfigError

HeaderValue = str | bytes | None
Headers = list[tuple[str, HeaderValue]]
TRACE_HEADERS = ("traceparent", "tracestate")

tracer = trace.get_tracer("agents", __version__)
_HEX = re.compile("[0-9a-f]+")
_KIND_NAMES = {kind: str(kind) for kind in SpanKind}


TRACE_FILES_KEPT = 3  # rotated trace files kept beside the current one
DEFAULT_TRACE_MAX_MB = 100


class JsonLinesExporter(SpanExporter):
    """Appends each finished span as one JSON line to a file, in the shape of the SDK's
    ``ReadableSpan.to_json`` (without links), written compactly: a process's resource is
    serialised once, not once per span, which made the SDK's own form the biggest cost of
    tracing.

    Every agent appends to the same file. Once it holds ``max_bytes``, the writer that notices
    renames it to ``<name>.1`` (and ``.1`` to ``.2``, up to ``keep``) under a lock file; the
    others notice that the name no longer points at the file they write, and reopen it."""

    def __init__(self, path: Path, *, max_bytes: int, keep: int = TRACE_FILES_KEPT) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._max_bytes = max_bytes
        self._keep = keep
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._resources: dict[int, str] = {}

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(self._line(span) for span in spans)
        with self._lock:
            self._file.write(lines)
            self._file.flush()
            if self._file.tell() >= self._max_bytes:
                self._rotate()
        return SpanExportResult.SUCCESS

    def _rotate(self) -> None:
        with self._path.with_name(self._path.name + ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the lock file is closed
            if self._current():  # nobody rotated it meanwhile
                self._shift()
            self._file.close()
            self._file = self._path.open("a", encoding="utf-8")

    def _shift(self) -> None:
        """``name.2`` -> ``name.3``, ``name.1`` -> ``name.2``, ``name`` -> ``name.1``; the oldest
        kept is overwritten, so dropped."""
        for n in range(self._keep, 0, -1):
            newer = self._path.with_name(f"{self._path.name}.{n - 1}") if n > 1 else self._path
            if newer.exists():
                newer.replace(self._path.with_name(f"{self._path.name}.{n}"))

    def _current(self) -> bool:
        """Whether the file's name still points at the file this exporter writes."""
        try:
            return self._path.stat().st_ino == os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def shutdown(self) -> None:
        self._file.close()

    def _line(self, span: ReadableSpan) -> str:
        context, parent, events = span.get_span_context(), span.parent, span.events
        attributes = span.attributes
        body = {
            "name": span.name,
            "context": {
                "trace_id": f"0x{context.trace_id:032x}" if context else None,
                "span_id": f"0x{context.span_id:016x}" if context else None,
            },
            "kind": _KIND_NAMES[span.kind],
            "parent_id": f"0x{parent.span_id:016x}" if parent else None,
            "start_time": _iso(span.start_time),
            "end_time": _iso(span.end_time),
            "status": {"status_code": span.status.status_code.name},
            "attributes": _plain(attributes),
            "events": [
                {
                    "name": e.name,
                    "timestamp": _iso(e.timestamp),
                    "attributes": _plain(e.attributes),
                }
                for e in events
            ]
            if events
            else [],
        }
        # The resource, serialised once per process, goes in as text before the closing brace.
        return jsontext.dumps(body)[:-1] + ', "resource": ' + self._resource(span) + "}\n"

    def _resource(self, span: ReadableSpan) -> str:
        resource = span.resource
        known = self._resources.get(id(resource))
        if known is None:
            known = jsontext.dumps({"attributes": dict(resource.attributes)})
            self._resources[id(resource)] = known
        return known


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    """A second's ISO 8601 prefix: spans come thousands a second, so each is formatted once."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _plain(attributes: Mapping[str, object] | None) -> dict[str, object]:
    """A span's attributes as a dict: the SDK hands out a read-only view of its own mapping,
    whose ``copy`` is a plain dict copy (``dict()`` of it walks it in Python, under a lock)."""
    if isinstance(attributes, MappingProxyType):
        return dict(attributes.copy())
    return dict(attributes or {})


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{_second(seconds)}.{fraction // 1000:06d}Z"


def setup_tracing(service: str) -> TracerProvider:
    """Install the process-wide tracer provider for an agent or CLI process."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(_exporter()))
    trace.set_tracer_provider(provider)
    return provider


def _exporter() -> SpanExporter:
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        # Imported only when asked for: it pulls in protobuf and requests.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()
    return JsonLinesExporter(
        Path(os.environ.get("MESH_TRACE_FILE", ".mesh/traces.jsonl")),
        max_bytes=_trace_max_mb() * 1024 * 1024,
    )


def _trace_max_mb() -> int:
    raw = os.environ.get("MESH_TRACE_MAX_MB", "").strip()
    if not raw:
        return DEFAULT_TRACE_MAX_MB
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(
            f"MESH_TRACE_MAX_MB must be a whole number of megabytes, 1 or more, not {raw!r}"
        )
    return int(raw)


def inject(headers: Headers, context: Context | None = None) -> None:
    """Add the W3C trace context of ``context`` (default: the current one) to Kafka headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    headers.extend((key, value.encode()) for key, value in carrier.items())


def extract(headers: Sequence[tuple[str, HeaderValue]] | None) -> Context:
    """The trace context carried by Kafka headers (an empty context when there is none)."""
    carrier = {
        key: value.decode("latin-1") if isinstance(value, bytes) else value
        for key, value in headers or ()
        if key in TRACE_HEADERS and value is not None
    }
    if len(carrier) == 1:  # a traceparent alone, as this mesh writes them
        parent = _traceparent(carrier.get("traceparent", ""))
        if parent is not None:
            return trace.set_span_in_context(NonRecordingSpan(parent))
    return propagate.extract(carrier)


def _traceparent(value: str) -> SpanContext | None:
    """A version-00 W3C ``traceparent``, read without the propagator's regular expression and
    its composite's pass for baggage (a third of a consumer span's cost); None for anything
    else, which the propagator then reads as it would have."""
    parts = value.split("-")
    if len(parts) != 4 or parts[0] != "00" or not all(map(_HEX.fullmatch, parts[1:])):
        return None
    trace_id, span_id, flags = parts[1], parts[2], parts[3]
    if len(trace_id) != 32 or len(span_id) != 16 or len(flags) != 2:
        return None
    context = SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)))
    return context if context.is_valid else None
