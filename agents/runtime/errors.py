"""Error types that say what happens next.

- ``ConfigError``: the process cannot start; the message names the fix.
- ``TransientError``: try the same thing again later (the consumer retries in place).
- ``PermanentError``: the record can never be handled; it goes to dead letters.
- ``PoisonRecord``: bytes that are not a valid event; carries the category for the dead letter.

``unavailable`` tells an outage (a service that does not answer, waited out however long it
lasts) from a failure of the record in hand (retried a bounded number of times).
"""

from __future__ import annotations

from enum import StrEnum

import psycopg
import redis
from confluent_kafka import KafkaError, KafkaException


class Category(StrEnum):
    """Why a record was refused; stable strings, used in dead letters and failure events."""

    UNDECODABLE = "undecodable"
    UNKNOWN_SCHEMA = "unknown_schema"
    INVALID_EVENT = "invalid_event"
    OVERSIZE = "oversize"
    REJECTED = "rejected"
    HANDLER_ERROR = "handler_error"
    UNKNOWN_TASK = "unknown_task"
    RETRIES_EXHAUSTED = "retries_exhausted"


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


class ServiceUnavailable(MeshError):
    """A service the mesh needs does not answer; raised to be waited out, never dead-lettered."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service} unavailable: {message}")
        self.service = service


_KAFKA_AWAY = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT}


def unavailable(exc: BaseException) -> str | None:
    """The service ``exc`` says is out of reach, or None when it is about the record in hand:
    an outage is no record's fault, so it is waited out rather than charged to one."""
    if isinstance(exc, ServiceUnavailable):
        return exc.service
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return "redis"
    # A connection that broke or cannot be had; a statement the server refused is not one.
    if isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg.errors.QueryCanceled
    ):
        return "postgres"
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return "kafka" if exc.args[0].code() in _KAFKA_AWAY else None
    return None
