"""The consumer runtime every agent runs: poll, decode, hand to a sink, then store offsets.

What happens to decoded events is a ``Sink``'s business: ``HandlerSink`` runs pure handlers,
``handler(event, delivery) -> events to emit``, and publishes what they return; the planner's sink
applies a batch in one ledger transaction with an outbox. The runtime owns the rest.

Records are consumed in batches; a record's offset is stored only after the sink finished with it
and everything it caused is durable (at-least-once; consumers de-duplicate). Bad input never stops
the loop: undecodable bytes, unknown writer schemas, oversize records, and records a handler
refuses go to the dead-letter topic with the original key, value and headers plus the reason and
where they came from. A ``TransientError`` retries the same record in place with capped
exponential backoff, which keeps the partition's order, a bounded number of times; a service
that does not answer (``errors.unavailable``) is waited for however long it takes. A handler that
gives up on a record also reports it to the sink's ``on_failure``, so the goal it belongs to is
decided on rather than left waiting. A broker that stops acknowledging is waited for too: offsets
are stored only once it has every record a batch caused.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from opentelemetry.trace import SpanKind

from agents.events import DeadLetter, Envelope, Event, Header, as_text
from agents.runtime.crash import crashpoint
from agents.runtime.errors import (
    Category,
    PermanentError,
    PoisonRecord,
    TransientError,
    unavailable,
)
from agents.runtime.kafka import consumer_config, fetch
from agents.runtime.logs import bind
from agents.runtime.publisher import DeliveryPending, Publisher
from agents.runtime.settings import MeshSettings
from agents.runtime.telemetry import extract, tracer
from schemas.codec import Codec
from topics.catalogue import spec_for

log = logging.getLogger(__name__)

BACKLOG_PER_THREAD = 4  # items a pooled sink holds in hand per thread before it waits for room
FLUSH_WAIT_S = 5.0  # how long one wait for the broker's acknowledgements lasts before it is logged


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
    # A header name that is not UTF-8 (a Java or Go producer can write one): the client cannot
    # read any of the record's headers, so it carries none and is dead-lettered.
    unreadable_headers: bool = False

    @classmethod
    def of(cls, message: Message) -> Delivery:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        headers, unreadable = _headers(message)
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key=message.key(),
            headers=headers,
            timestamp_ms=message.timestamp()[1],
            value=message.value(),
            unreadable_headers=unreadable,
        )


# The client returns the list with its decoding error still set when a name is not UTF-8. A call
# through ``methodcaller`` checks the result and raises there; a plain ``message.headers()`` is
# not always checked (an interpreter's specialised call), and the error then surfaces at some
# later, unrelated call.
_READ_HEADERS = operator.methodcaller("headers")


def _headers(message: Message) -> tuple[tuple[tuple[str, bytes | None], ...], bool]:
    """The record's headers, and whether they could not be read (then none)."""
    try:
        raw = _READ_HEADERS(message)
    except (UnicodeDecodeError, SystemError):  # the client decodes every name as UTF-8
        return (), True
    # Documented as a list of (str, bytes) pairs for a consumed record; the stubs allow what a
    # record being produced may hold.
    return tuple(cast(list[tuple[str, bytes | None]], raw or [])), False


Handler = Callable[[Any, Delivery], Iterable[Event]]
Failure = Callable[[Any, str, str], Iterable[Event]]
"""(event, category, reason) of a record a sink gave up on -> the events that report it."""
SpanName = Callable[["Item"], str | None]
"""The name of the span a sink handles a record in, or None to handle it without a span of its
own (for events whose handling decides and sends nothing; a span costs as much as the rest of a
record's handling). Without one, every record has its ``process_span`` name."""


@dataclass
class Backoff:
    """Capped exponential backoff for transient handler failures. A record's own transient
    failures are retried until ``max_attempts`` tries or ``max_elapsed_s`` have passed (with the
    defaults, eight tries over about 6 s), then the record is given up on; an outage is
    waited out without a bound."""

    initial_s: float = 0.05
    factor: float = 2.0
    max_s: float = 5.0
    max_attempts: int = 8
    max_elapsed_s: float = 60.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_s, self.initial_s * self.factor ** (attempt - 1)))

    def exhausted(self, attempt: int, since: float) -> bool:
        """Whether a record that failed ``attempt`` times since ``since`` (monotonic) has had
        all its tries."""
        return attempt >= self.max_attempts or time.monotonic() - since >= self.max_elapsed_s


@dataclass(frozen=True)
class Item:
    """A decoded event and where it came from."""

    event: Event
    delivery: Delivery


class Sink(Protocol):
    """Where decoded events go. ``handle`` returns the deliveries it finished with; when it
    returns, everything they caused is durable (published and acknowledged, or committed)."""

    accepts: frozenset[type[Event]]

    def handle(self, items: Sequence[Item], runtime: RuntimeHandle) -> Sequence[Delivery]: ...

    def collect(self) -> Sequence[Delivery]:
        """What the sink finished since it last said, of items ``handle`` returned without: a
        sink whose calls can be slow hands them to threads and goes on with the next records."""

    def close(self) -> None:
        """The runtime is stopping: settle what is pending (called before the consumer closes)."""


class RuntimeHandle(Protocol):
    """What a sink may use of the runtime that feeds it."""

    publisher: Publisher
    backoff: Backoff

    def stopping(self) -> bool: ...

    def wait_or_stop(self, seconds: float) -> bool: ...

    def dead_letter(self, delivery: Delivery, category: str, reason: str) -> None: ...


@dataclass(frozen=True)
class Linger:
    """Wait up to ``seconds`` for more records when a batch holds nothing but events of
    ``types``, whose follow-up usually comes within moments: the planner's batch of a task's
    outcome was still committing when the verdict (2-3 ms behind it) arrived, and the verdict
    waited for it. Handled together, the verdict waits for nothing and the task goes straight
    to succeeded. The wait ends as soon as any other record arrives."""

    types: frozenset[type[Event]]
    seconds: float

    def gather(
        self, consumer: Consumer, codec: Codec, messages: list[Message], most: int
    ) -> list[Message]:
        deadline = time.monotonic() + self.seconds
        fresh = messages
        while fresh and len(messages) < most and all(self._awaits(m, codec) for m in fresh):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            fresh = fetch(consumer, most - len(messages), left)
            messages = [*messages, *fresh]
        return messages

    def _awaits(self, message: Message, codec: Codec) -> bool:
        if message.error() is not None:
            return False
        try:
            return codec.model_of(message.value()) in self.types
        except PoisonRecord:
            return False


class OpenOffsets:
    """The records handed out and not yet finished, per partition in offset order. What may be
    stored is the offset past the last record before the first unfinished one, so a record
    finished early (a fast call beside a slow one) never lets its partition's commit pass a
    record still in hand."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], dict[int, tuple[Delivery, bool]]] = {}

    def take(self, delivery: Delivery) -> None:
        self._open.setdefault((delivery.topic, delivery.partition), {})[delivery.offset] = (
            delivery,
            False,
        )

    def finish(self, deliveries: Iterable[Delivery]) -> None:
        for d in deliveries:
            held = self._open.get((d.topic, d.partition), {})
            if held.get(d.offset, (None, False))[0] is d:  # not one of a partition since lost
                held[d.offset] = (d, True)

    def storable(self) -> list[TopicPartition]:
        ready = []
        for (topic, partition), held in self._open.items():
            last = None
            for offset, (_, done) in list(held.items()):
                if not done:
                    break
                del held[offset]
                last = offset
            if last is not None:
                ready.append(TopicPartition(topic, partition, last + 1))
        return ready

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """The partitions went to another consumer: what is still in hand of them is theirs."""
        for tp in partitions:
            self._open.pop((tp.topic, tp.partition), None)


class ConsumerRuntime:
    """One consumer (one thread) feeding decoded events of some types to a sink."""

    def __init__(
        self,
        *,
        settings: MeshSettings,
        codec: Codec,
        publisher: Publisher,
        group_id: str,
        roles: Sequence[str],
        sink: Sink,
        client_id: str,
        backoff: Backoff | None = None,
        tick: Callable[[], None] | None = None,
        linger: Linger | None = None,
    ) -> None:
        self._settings = settings
        self._linger = linger
        self._codec = codec
        self.publisher = publisher
        self._sink = sink
        self._client_id = client_id
        self._tick = tick
        self.backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._offsets = OpenOffsets()
        self._consumer = Consumer(consumer_config(settings, client_id=client_id, group_id=group_id))
        self._consumer.subscribe(
            [spec_for(r).name(settings.topic_prefix) for r in roles],
            on_revoke=self._moved,
            on_lost=self._moved,
        )

    def _moved(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._offsets.forget(partitions)

    def stop(self) -> None:
        """Ask ``run`` to return after the batch in hand; safe from any thread or a signal."""
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_or_stop(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when a stop was requested meanwhile."""
        return self._stop.wait(seconds)

    def run(self) -> None:
        """Handle batches until ``stop`` is called, then commit and leave the group."""
        try:
            while not self._stop.is_set():
                self.poll_batch(timeout=0.2)
                if self._tick is not None:
                    self._tick_guarded()
        finally:
            self.close()

    def poll_batch(self, timeout: float = 1.0) -> int:
        """Consume one batch and handle it; returns how many records were finished."""
        most = self._settings.consume_batch
        messages = fetch(self._consumer, most, timeout)
        if self._linger is not None and messages:
            messages = self._linger.gather(self._consumer, self._codec, messages, most)
        finished: list[Delivery] = []
        items: list[Item] = []
        try:
            for message in messages:
                if self._record_error(message):
                    continue
                delivery = Delivery.of(message)
                self._offsets.take(delivery)
                item = self._decode(delivery)
                if item is None:
                    finished.append(delivery)  # dead-lettered, or another role's event
                else:
                    items.append(item)
            if items:
                finished += self._sink.handle(items, self)
        finally:
            finished += self._sink.collect()
            self._settle(finished)
        return len(finished)

    def _settle(self, finished: list[Delivery]) -> None:
        """Make what ``finished`` caused durable, then store the offsets that became storable."""
        if not self._flushed():
            return  # stopping with records unacknowledged: their offsets stay unstored
        if finished:
            crashpoint("consumer.after_publish")
            self._offsets.finish(finished)
            ready = self._offsets.storable()
            if ready:
                try:
                    self._consumer.store_offsets(offsets=ready)
                except KafkaException as exc:  # a partition lost meanwhile: its owner goes on
                    log.warning("offsets not stored: %s", exc)

    def _flushed(self) -> bool:
        """Wait until the broker has every record sent, however long it is away; False when a
        stop was asked for meanwhile."""
        attempt = 1
        while True:
            try:
                self.publisher.flush(timeout=FLUSH_WAIT_S)
                return True
            except DeliveryPending as exc:
                delay = self.backoff.delay(attempt)
                log.warning("waiting for the broker (attempt %d): %s", attempt, exc)
                if self.wait_or_stop(delay):
                    return False
                attempt += 1

    def _tick_guarded(self) -> None:
        """Between batches: the agent's own chores, whose failure (a service away) is logged and
        tried again at the next tick, never the end of the loop."""
        assert self._tick is not None
        try:
            self._tick()
        except Exception as exc:
            service = unavailable(exc)
            if service is None:
                log.exception("housekeeping failed")
            else:
                log.warning("housekeeping waits for %s: %s", service, exc)
                self.wait_or_stop(self.backoff.max_s / 5)

    def _record_error(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return False
        if error.code() == KafkaError._PARTITION_EOF:
            return True
        if error.fatal() or error.code() == KafkaError._FATAL:
            # The consumer is unusable (fenced by a newer process with its instance name, for
            # one): end the process, so its supervisor starts a fresh one.
            raise KafkaException(error)
        log.warning("consumer error: %s", error.str())
        return True

    def _decode(self, delivery: Delivery) -> Item | None:
        """The record's event when this consumer's sink takes its type; None when it does not,
        or when the record was dead-lettered."""
        value = delivery.value
        try:
            if value is not None and len(value) > self._settings.max_event_bytes:
                raise PoisonRecord(
                    Category.OVERSIZE,
                    f"record is {len(value)} bytes, over MESH_MAX_EVENT_BYTES="
                    f"{self._settings.max_event_bytes}",
                )
            if self._codec.model_of(value) not in self._sink.accepts:
                return None  # another role's event: its body is not this consumer's to check
            if delivery.unreadable_headers:
                raise PoisonRecord(
                    Category.INVALID_EVENT,
                    "a header name is not UTF-8; the record's headers cannot be read",
                )
            return Item(self._codec.decode(value), delivery)
        except PoisonRecord as exc:
            self.dead_letter(delivery, exc.category, str(exc))
            return None

    def dead_letter(self, delivery: Delivery, category: str, reason: str) -> None:
        """Send the record whole to the dead-letter topic, with why and where from."""
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
            message=as_text(reason),
            source_topic=delivery.topic,
            source_partition=delivery.partition,
            source_offset=delivery.offset,
            original_key=delivery.key,
            original_value=delivery.value,
            original_headers=[Header(key=k, value=v) for k, v in delivery.headers],
            agent=self._client_id,
        )
        self.publisher.publish(letter, key=delivery.key)

    def close(self) -> None:
        """Settle the sink, flush what was emitted, commit stored offsets, leave the group."""
        try:
            self._sink.close()
            self._settle(list(self._sink.collect()))
        finally:
            self._consumer.close()


class BatchHooks(Protocol):
    """What an agent does once per batch around its per-event handlers: fetch in one round trip
    what they will all need, and write back together what they left behind."""

    def before_batch(self, events: Sequence[Event]) -> None: ...

    def after_batch(self) -> None: ...


class HandlerSink:
    """Runs pure handlers, publishes what they return; transient failures retry in place,
    refusals and handler bugs go to dead letters. With ``concurrency`` > 1 the items run on a
    thread pool (for slow tools) and ``handle`` does not wait for them: the consumer goes on
    with the next records while they run, up to ``BACKLOG_PER_THREAD`` items a thread, and
    ``collect`` hands them back as they finish, so a slow call holds up no other. Their order is
    then not kept. Items for which ``inline`` says so run on the calling thread meanwhile:
    handing a record that never waits to a pool thread and back cost more than handling it.

    ``hooks`` run before and after each batch. A failing ``before_batch`` is only logged: the
    handlers then fetch what they need one by one. ``on_failure(event, category, reason)`` gives
    the events that report a record the sink gave up on (dead-lettered), so whoever waits for
    its outcome hears of it."""

    def __init__(
        self,
        handlers: Mapping[type[Event], Handler],
        *,
        concurrency: int = 1,
        hooks: BatchHooks | None = None,
        inline: Callable[[Event], bool] = lambda event: False,
        span_name: SpanName | None = None,
        on_failure: Failure | None = None,
    ) -> None:
        self._on_failure = on_failure
        self._handlers = dict(handlers)
        self._span_name = span_name
        self.accepts = frozenset(self._handlers)
        self._pool = ThreadPoolExecutor(concurrency) if concurrency > 1 else None
        self._backlog = concurrency * BACKLOG_PER_THREAD
        self._running: set[Future[Delivery | None]] = set()
        self._hooks = hooks
        self._inline = inline

    def handle(self, items: Sequence[Item], runtime: RuntimeHandle) -> Sequence[Delivery]:
        if self._hooks is not None:
            try:
                self._hooks.before_batch([item.event for item in items])
            except Exception:  # an optimisation only: the handlers fetch for themselves
                log.exception("batch prefetch failed; handling record by record")
        try:
            done = self._finish_all(items, runtime)
            # On their way while the hooks write back (a worker's Redis pipeline), as a record
            # produced inside its handler was.
            runtime.publisher.send_held()
        finally:
            if self._hooks is not None:
                self._hooks.after_batch()
        if len(self._running) > self._backlog:  # enough in hand: wait for room, not for all
            wait(self._running, return_when=FIRST_COMPLETED)
        return [d for d in done if d is not None]

    def _finish_all(self, items: Sequence[Item], runtime: RuntimeHandle) -> list[Delivery | None]:
        pool = self._pool
        if pool is None:
            return [self._finish(item, runtime) for item in items]
        here = [self._inline(item.event) for item in items]
        # The pool's share is submitted first, so it runs while this thread does its own.
        for item, inline in zip(items, here, strict=True):
            if not inline:
                self._running.add(pool.submit(self._finish, item, runtime))
        return [
            self._finish(item, runtime) for item, inline in zip(items, here, strict=True) if inline
        ]

    def collect(self) -> list[Delivery]:
        ended = [f for f in self._running if f.done()]
        self._running.difference_update(ended)
        return [d for d in (f.result() for f in ended) if d is not None]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _finish(self, item: Item, runtime: RuntimeHandle) -> Delivery | None:
        with bind(**log_fields(item.event)):
            return self._dispatch(item, runtime)

    def _dispatch(self, item: Item, runtime: RuntimeHandle) -> Delivery | None:
        handler = self._handlers[type(item.event)]
        attempt, since = 1, time.monotonic()
        while True:
            try:
                with record_span(item, self._span_name):
                    for out in handler(item.event, item.delivery):
                        runtime.publisher.publish(out)
                return item.delivery
            except Exception as exc:  # noqa: BLE001 (retried, or given up on and logged there)
                if not self._retries(exc, attempt, since, runtime.backoff):
                    self._give_up(item, runtime, exc, attempt)
                    return item.delivery
                delay = runtime.backoff.delay(attempt)
                log.warning("%s (attempt %d), retry in %.2fs: %s", _why(exc), attempt, delay, exc)
                if runtime.wait_or_stop(delay):
                    return None  # not finished: its offset is not stored, the next owner retries
                attempt += 1

    @staticmethod
    def _retries(exc: Exception, attempt: int, since: float, backoff: Backoff) -> bool:
        """Whether to handle the record again: always while a service is away, a few times for
        a transient failure of its own, never for a refusal or a bug."""
        if unavailable(exc) is not None:
            return True
        return isinstance(exc, TransientError) and not backoff.exhausted(attempt, since)

    def _give_up(self, item: Item, runtime: RuntimeHandle, exc: Exception, attempt: int) -> None:
        """Dead-letter the record, and report it through ``on_failure``."""
        if isinstance(exc, PermanentError):
            category, reason = str(exc.category), str(exc)
        elif isinstance(exc, TransientError):
            category, reason = Category.RETRIES_EXHAUSTED, f"gave up after {attempt} tries: {exc}"
        else:  # a handler bug must not stop the mesh; keep the record
            log.exception("handler failed on %s", item.event.schema_name)
            category, reason = Category.HANDLER_ERROR, f"{type(exc).__name__}: {exc}"
        reason = as_text(reason)
        runtime.dead_letter(item.delivery, category, reason)
        if self._on_failure is None:
            return
        try:
            for out in self._on_failure(item.event, category, reason):
                runtime.publisher.publish(out)
        except Exception:
            log.exception("could not report the failure of %s", item.event.schema_name)


def _why(exc: Exception) -> str:
    service = unavailable(exc)
    return "transient failure" if service is None else f"waiting for {service}"


def record_span(item: Item, span_name: SpanName | None) -> AbstractContextManager[object]:
    """The span a sink handles ``item`` in: its consumer span, named by ``span_name`` when the
    sink has one, or none at all when that says so."""
    if span_name is None:
        return consumer_span(item)
    name = span_name(item)
    return nullcontext() if name is None else consumer_span(item, name)


def process_span(item: Item) -> str:
    """A record's span name unless its sink names it otherwise."""
    return f"process {item.delivery.topic}"


def consumer_span(item: Item, name: str | None = None) -> AbstractContextManager[object]:
    """The consumer span of one record (``process_span`` unless named), continuing the trace its
    producer started (the tracer's own context manager: a generator around it cost a tenth of
    the span)."""
    delivery, event = item.delivery, item.event
    context = extract(delivery.headers)
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": delivery.topic,
        "messaging.destination.partition.id": str(delivery.partition),
        "messaging.kafka.offset": delivery.offset,
        "mesh.event.type": event.schema_name,
        "mesh.goal_id": event.goal_id,
    }
    task_id, attempt = getattr(event, "task_id", None), getattr(event, "attempt", None)
    if task_id:
        attributes["mesh.task_id"] = task_id
    if attempt is not None:
        attributes["mesh.attempt"] = attempt
    return tracer.start_as_current_span(
        name or process_span(item),
        context=context,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )


def log_fields(event: Event) -> dict[str, str]:
    """The ids stamped on every log line written while ``event`` is handled."""
    fields = {"goal_id": event.goal_id, "event_type": event.schema_name}
    task_id = getattr(event, "task_id", None)
    if task_id:
        fields["task_id"] = str(task_id)
    return fields
