"""The local trace file rotates at its size limit, keeping a few older files, while several
processes append to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agents.runtime.errors import ConfigError
from agents.runtime.telemetry import JsonLinesExporter, setup_tracing

pytestmark = pytest.mark.unit
LIMIT = 4096
KEPT = 2


def writer(path: Path) -> TracerProvider:
    """A tracer provider writing to ``path``, standing for one agent process."""
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesExporter(path, max_bytes=LIMIT, keep=KEPT))
    )
    return provider


def test_the_file_rotates_at_its_limit_and_keeps_a_few_older_ones(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    agents = [writer(path).get_tracer("planner"), writer(path).get_tracer("worker")]
    for n in range(400):  # about 100 KB of spans, 25 times the limit
        with agents[n % 2].start_as_current_span(f"span-{n}"):
            pass
    files = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert files == ["traces.jsonl", "traces.jsonl.1", "traces.jsonl.2"]
    for name in files:
        size = (tmp_path / name).stat().st_size
        assert size < LIMIT + 1024, (name, size)  # a file passes the limit by one export at most
        for line in (tmp_path / name).read_text().splitlines():
            json.loads(line)  # whole lines only: no writer cut another's
    newest = [json.loads(line)["name"] for line in path.read_text().splitlines()]
    assert "span-399" in newest or "span-398" in newest  # both writers moved to the new file


@pytest.mark.parametrize("value", ["0", "-1", "ten", "1.5"])
def test_a_bad_size_limit_fails_at_start_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("MESH_TRACE_FILE", str(tmp_path / "t.jsonl"))
    monkeypatch.setenv("MESH_TRACE_MAX_MB", value)
    with pytest.raises(ConfigError, match="MESH_TRACE_MAX_MB"):
        setup_tracing("test")
