"""The consumer runtime every agent runs: poll, decode, dispatch, publish, then store offsets.

Handlers are pure decisions: ``handler(event, delivery) -> events to emit``. The runtime owns the
rest. Records are consumed in batches; a record's offset is stored only after its handler returned
and everything it emitted was acknowledged by the broker (at-least-once; handlers de-duplicate by
``event_id``). Bad input never stops the loop: undecodable bytes, unknown writer schemas, oversize
records, and records a handler refuses go to the dead-letter topic with the original key, value and
headers plus the reason and where they came from. A ``TransientError`` retries the same record in
place with capped exponential backoff, which keeps the partition's order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from opentelemetry.trace import SpanKind

from agents.events import DeadLetter, Envelope, Event, Header
from agents.runtime.errors import Category, PermanentError, PoisonRecord, TransientError
from agents.runtime.kafka import consumer_config
from agents.runtime.logs import bind
from agents.runtime.publisher import Publisher
from agents.runtime.settings import MeshSettings
from agents.runtime.telemetry import extract, tracer
from schemas.codec import Codec
from topics.catalogue import spec_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """Where a record came from; handed to handlers beside the decoded event."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int
    value: bytes | None

    @classmethod
    def of(cls, message: Message) -> Delivery:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        raw = message.headers() or []
        headers = raw.items() if isinstance(raw, dict) else raw
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key=message.key(),
            headers=tuple((k, v.encode() if isinstance(v, str) else v) for k, v in headers),
            timestamp_ms=message.timestamp()[1],
            value=message.value(),
        )


Handler = Callable[[Any, Delivery], Iterable[Event]]


class _Stopping(Exception):
    """Raised inside a batch when a stop was requested while a record waited to be retried."""


@dataclass
class Backoff:
    """Capped exponential backoff for transient handler failures."""

    initial_s: float = 0.05
    factor: float = 2.0
    max_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_s, self.initial_s * self.factor ** (attempt - 1)))


class ConsumerRuntime:
    """One consumer (one thread) dispatching a set of event types to handlers."""

    def __init__(
        self,
        *,
        settings: MeshSettings,
        codec: Codec,
        publisher: Publisher,
        group_id: str,
        roles: Sequence[str],
        handlers: Mapping[type[Event], Handler],
        client_id: str,
        backoff: Backoff | None = None,
    ) -> None:
        self._settings = settings
        self._codec = codec
        self._publisher = publisher
        self._handlers = dict(handlers)
        self._client_id = client_id
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._consumer = Consumer(consumer_config(settings, client_id=client_id, group_id=group_id))
        self._consumer.subscribe([spec_for(r).name(settings.topic_prefix) for r in roles])

    def stop(self) -> None:
        """Ask ``run`` to return after the record in hand; safe from any thread or a signal."""
        self._stop.set()

    def run(self) -> None:
        """Handle batches until ``stop`` is called, then commit and leave the group."""
        try:
            while not self._stop.is_set():
                self.poll_batch(timeout=0.5)
        finally:
            self.close()

    def poll_batch(self, timeout: float = 1.0) -> int:
        """Consume one batch and handle it; returns how many records were finished."""
        messages = self._consumer.consume(self._settings.consume_batch, timeout)
        done: list[Delivery] = []
        try:
            for message in messages:
                if self._record_error(message):
                    continue
                delivery = Delivery.of(message)
                self._handle(delivery)
                done.append(delivery)
        except _Stopping:
            log.info(
                "stopping with %d record(s) of the batch left for the next owner",
                len(messages) - len(done),
            )
        finally:
            self._publisher.flush()
            self._store(done)
        return len(done)

    def _record_error(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return False
        if error.code() == KafkaError._PARTITION_EOF:
            return True
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer error: %s", error.str())
        return True

    def _store(self, deliveries: list[Delivery]) -> None:
        last: dict[tuple[str, int], int] = {}
        for d in deliveries:
            last[(d.topic, d.partition)] = d.offset
        if last:
            self._consumer.store_offsets(
                offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
            )

    def _handle(self, delivery: Delivery) -> None:
        try:
            event = self._decode(delivery.value)
        except PoisonRecord as exc:
            self._dead_letter(delivery, exc.category, str(exc))
            return
        handler = self._handlers.get(type(event))
        if handler is None:
            return  # another role's event on a shared topic: nothing to do here
        with bind(goal_id=event.goal_id, event_type=event.schema_name):
            self._dispatch(handler, event, delivery)

    def _decode(self, value: bytes | None) -> Event:
        if value is not None and len(value) > self._settings.max_event_bytes:
            raise PoisonRecord(
                Category.OVERSIZE,
                f"record is {len(value)} bytes, over MESH_MAX_EVENT_BYTES="
                f"{self._settings.max_event_bytes}",
            )
        return self._codec.decode(value)

    def _dispatch(self, handler: Handler, event: Event, delivery: Delivery) -> None:
        attempt = 1
        while True:
            try:
                self._run_handler(handler, event, delivery)
                return
            except TransientError as exc:
                delay = self._backoff.delay(attempt)
                log.warning(
                    "transient failure (attempt %d), retrying in %.2fs: %s", attempt, delay, exc
                )
                if self._stop.wait(delay):
                    raise _Stopping from exc
                attempt += 1
            except PermanentError as exc:
                self._dead_letter(delivery, exc.category, str(exc))
                return
            except Exception as exc:  # a handler bug must not stop the mesh; keep the record
                log.exception("handler failed on %s", event.schema_name)
                self._dead_letter(delivery, Category.HANDLER_ERROR, f"{type(exc).__name__}: {exc}")
                return

    def _run_handler(self, handler: Handler, event: Event, delivery: Delivery) -> None:
        context = extract(delivery.headers)
        name = f"process {delivery.topic}"
        with tracer.start_as_current_span(name, context=context, kind=SpanKind.CONSUMER) as span:
            span.set_attributes(
                {
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": delivery.topic,
                    "messaging.destination.partition.id": str(delivery.partition),
                    "messaging.kafka.offset": delivery.offset,
                    "mesh.event.type": event.schema_name,
                    "mesh.goal_id": event.goal_id,
                }
            )
            for out in handler(event, delivery):
                self._publisher.publish(out)

    def _dead_letter(self, delivery: Delivery, category: str, reason: str) -> None:
        log.warning(
            "dead-lettering %s[%d]@%d: %s: %s",
            delivery.topic,
            delivery.partition,
            delivery.offset,
            category,
            reason,
        )
        letter = DeadLetter(
            envelope=Envelope(goal_id="", producer_agent=self._client_id),
            category=str(category),
            message=reason,
            source_topic=delivery.topic,
            source_partition=delivery.partition,
            source_offset=delivery.offset,
            original_key=delivery.key,
            original_value=delivery.value,
            original_headers=[Header(key=k, value=v) for k, v in delivery.headers],
            agent=self._client_id,
        )
        self._publisher.publish(letter, key=delivery.key)

    def close(self) -> None:
        """Flush what was emitted, commit stored offsets, leave the group."""
        try:
            self._publisher.flush()
        finally:
            self._consumer.close()
