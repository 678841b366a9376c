"""Publishing typed events: the event's type picks its topic and key (``topics.catalogue``).

``publish`` encodes an event and holds the record; ``flush`` hands every held record to an
idempotent producer, waits for every outstanding delivery and raises ``DeliveryError`` if any
failed, so callers store consumer offsets or report success only for what the broker really has.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer
from opentelemetry import trace

from agents.events import DeadLetter, Event, TaskAssigned
from agents.runtime.errors import Category, MeshError, PermanentError, ServiceUnavailable
from agents.runtime.kafka import producer_config
from agents.runtime.settings import MeshSettings
from agents.runtime.telemetry import Headers, HeaderValue, inject
from schemas.codec import Codec
from topics.catalogue import TOPIC_OF

TYPE_HEADER = "mesh-type"
SENT_AT_HEADER = "mesh-sent-at-us"


class DeliveryError(MeshError):
    """The broker did not accept one or more records."""


class DeliveryPending(DeliveryError, ServiceUnavailable):
    """Nothing was refused, but the broker has not acknowledged every record yet (it is away):
    the producer keeps them and goes on trying, so waiting longer is enough."""

    def __init__(self, message: str) -> None:
        ServiceUnavailable.__init__(self, "kafka", message)


class EventTooLarge(PermanentError):
    """An encoded event exceeds ``MESH_MAX_EVENT_BYTES``."""

    category = Category.OVERSIZE


@dataclass(frozen=True)
class Outgoing:
    """An encoded record ready to be sent (or stored in the outbox)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, HeaderValue], ...]


class Publisher:
    """Typed, asynchronous, idempotent publishing of mesh events."""

    def __init__(self, *, settings: MeshSettings, codec: Codec, client_id: str) -> None:
        self._settings = settings
        self.topic_prefix = settings.topic_prefix  # the mesh whose topics this publisher serves
        self._codec = codec
        self._producer = Producer(producer_config(settings, client_id=client_id))
        self._failures: list[str] = []
        self._held: deque[Outgoing] = deque()
        self._draining = threading.Lock()
        # Whether a record went to the producer since the last flush that saw every one
        # acknowledged: a flush with nothing to wait for still woke every broker thread of the
        # client (25-60 us of CPU), and batches that send nothing (records of other roles, polls
        # that found none) were two in five of the evaluator's at 550 chain tasks/s.
        self._unconfirmed = False

    def publish(self, event: Event, *, key: bytes | None = None) -> None:
        """Encode ``event`` for its topic and hold it until ``flush``; ``key`` overrides the
        catalogue's key (dead letters).

        Held rather than produced at once: a batch's records handed to the client together go
        out in fewer produce requests, and under load a produce call between two handlers took
        0.3-0.4 ms of wall time each (with the GIL held) against 6-20 us in a burst.
        """
        self._held.append(self.prepare(event, key=key))

    def prepare(self, event: Event, *, key: bytes | None = None) -> Outgoing:
        """Encode ``event`` into the record that will carry it, trace context included.

        Separate from ``send`` so a record can be stored in the ledger's outbox first and sent
        after the transaction that produced it has committed.
        """
        spec = TOPIC_OF[type(event)]
        topic = spec.name(self._settings.topic_prefix)
        value = self._codec.encode(event)
        if len(value) > self._settings.max_event_bytes and not isinstance(event, DeadLetter):
            raise EventTooLarge(
                f"{event.schema_name} is {len(value)} bytes, over MESH_MAX_EVENT_BYTES="
                f"{self._settings.max_event_bytes}"
            )
        if key is None and spec.key:
            key = str(getattr(event, spec.key)).encode()
        headers: Headers = [
            (TYPE_HEADER, event.schema_name.encode()),
            (SENT_AT_HEADER, str(time.time_ns() // 1000).encode()),
        ]
        # No span of its own per send: the span in hand (the record being handled, the client's
        # goal) is the next hop's parent, which links the trace across Kafka all the same. A send
        # span per record was a third of all spans for no decision of its own.
        inject(headers)
        if isinstance(event, TaskAssigned):  # the send of an assignment is the dispatch decision
            _note_dispatch(event)
        return Outgoing(topic, key, value, tuple(headers))

    def send(self, record: Outgoing) -> None:
        """Queue an encoded record; ``flush`` reports whether the broker took it."""
        while True:
            try:
                self._producer.produce(
                    record.topic,
                    record.value,
                    record.key,
                    headers=list(record.headers),
                    on_delivery=self._on_delivery,
                )
                self._unconfirmed = True
                break
            except BufferError:  # local queue full: let deliveries drain, then try again
                self._producer.poll(0.05)
        # Delivery reports are served by ``flush``, which every sender calls after its batch;
        # serving them here too cost a call into the client for every record.

    def send_held(self) -> None:
        """Hand what ``publish`` held to the producer without waiting for the broker."""
        # Under the lock, so a thread that finds nothing left to send knows that what another
        # thread took from ``_held`` was produced before its own wait in ``flush``.
        with self._draining:
            while self._held:
                self.send(self._held.popleft())

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error.str()}")

    def flush(self, timeout: float = 30.0) -> None:
        """Send what ``publish`` held, then wait until every queued record is acknowledged; raise
        if any was refused or is late."""
        self.send_held()
        if not self._unconfirmed and not self._failures:
            return
        self._unconfirmed = False  # a send from here on sets it again, for the next flush
        remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining or failures:
            self._unconfirmed = True  # what is still outstanding is waited for again next time
        if failures:
            raise DeliveryError("; ".join(failures))
        if remaining:
            raise DeliveryPending(f"{remaining} record(s) still unacknowledged after {timeout:g}s")

    def outstanding(self) -> int:
        """Records handed to the producer that the broker has not acknowledged yet."""
        return len(self._producer)

    def close(self) -> None:
        self.flush()


def _note_dispatch(event: TaskAssigned) -> None:
    """A ``dispatch`` event on the span in hand (the verdict or goal that led to it)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            "dispatch",
            {"mesh.task_id": event.task_id, "mesh.tool": event.tool, "mesh.attempt": event.attempt},
        )
