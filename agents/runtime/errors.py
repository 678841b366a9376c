"""Error types that say what happens next.

- ``ConfigError``: the process cannot start; the message names the fix.
- ``TransientError``: try the same thing again later (the consumer retries in place).
- ``PermanentError``: the record can never be handled; it goes to dead letters.
- ``PoisonRecord``: bytes that are not a valid event; carries the category for the dead letter.
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    """Why a record was refused; stable strings, used in dead letters and failure events."""

    UNDECODABLE = "undecodable"
    UNKNOWN_SCHEMA = "unknown_schema"
    INVALID_EVENT = "invalid_event"
    OVERSIZE = "oversize"
    REJECTED = "rejected"
    HANDLER_ERROR = "handler_error"


class MeshError(Exception):
    """Base of every error the mesh raises on purpose."""


class ConfigError(MeshError):
    """Wrong or unreachable configuration; raised at start-up, never on the first message."""


class TransientError(MeshError):
    """A failure that may pass: the same record is handled again after a backoff."""


class PermanentError(MeshError):
    """The handler refuses the record for good; the runtime dead-letters it and goes on."""

    category = Category.REJECTED


class PoisonRecord(PermanentError):
    """Bytes that cannot become an event (garbage, unknown writer schema, invalid content)."""

    def __init__(self, category: Category, message: str) -> None:
        super().__init__(message)
        self.category = category
