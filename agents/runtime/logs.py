"""JSON-lines logging stamped with the goal, task and trace of the work in hand.

Library modules use ``logging.getLogger(__name__)``; only entry points call ``configure``.
``bind(goal_id=..., task_id=...)`` sets the ids for everything logged inside its block.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry import trace

from agents import jsontext

_fields: ContextVar[dict[str, str]] = ContextVar("mesh_log_fields", default={})  # noqa: B039


@contextmanager
def bind(**fields: str) -> Iterator[None]:
    """Stamp ``fields`` on every log record written inside the block."""
    token = _fields.set(_fields.get() | fields)
    try:
        yield
    finally:
        _fields.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, bound ids, trace ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields.get(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        return jsontext.dumps(entry)


def configure(level: str = "INFO") -> None:
    """Send JSON lines to stderr; called once by the CLI."""
    _send_to(logging.StreamHandler(sys.stderr))
    logging.getLogger().setLevel(level.upper())


def to_file(path: Path) -> None:
    """Send the JSON lines to ``path`` instead (a command whose screen tells a story of its own,
    such as the demo: a library's warning there would interrupt it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _send_to(logging.FileHandler(path, encoding="utf-8"))


def _send_to(handler: logging.Handler) -> None:
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
