"""Trace context read from Kafka headers: the fast path reads what the W3C propagator reads."""

from __future__ import annotations

import pytest
from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from agents.runtime.telemetry import extract, inject

GOOD = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1))


def _read(headers: list[tuple[str, bytes]]) -> SpanContext:
    return trace.get_current_span(extract(headers)).get_span_context()


def _propagator(value: str) -> SpanContext:
    return trace.get_current_span(propagate.extract({"traceparent": value})).get_span_context()


def test_reads_back_what_inject_wrote() -> None:
    headers: list[tuple[str, str | bytes | None]] = []
    inject(headers, trace.set_span_in_context(NonRecordingSpan(GOOD)))
    read = _read([(k, v) for k, v in headers if isinstance(v, bytes)])
    assert (read.trace_id, read.span_id, read.trace_flags) == (
        GOOD.trace_id,
        GOOD.span_id,
        GOOD.trace_flags,
    )
    assert read.is_remote


@pytest.mark.parametrize(
    "value",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",  # not sampled
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # invalid trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # invalid span id
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01",  # short span id
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later",  # a later version
        "00-0af7651916cd43dd_448eb211c80319c-b7ad6b7169203331-01",
        "garbage",
    ],
)
def test_every_traceparent_reads_as_the_propagator_reads_it(value: str) -> None:
    assert _read([("traceparent", value.encode())]) == _propagator(value)


def test_a_tracestate_goes_to_the_propagator() -> None:
    value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = [("traceparent", value.encode()), ("tracestate", b"vendor=1")]
    read = _read(headers)
    assert read.trace_id == GOOD.trace_id and read.trace_state.get("vendor") == "1"
