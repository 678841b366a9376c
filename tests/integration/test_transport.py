"""Typed transport on the real broker: round trips, dead letters, retries, offsets, traces."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

import pytest
from confluent_kafka import KafkaException
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents import events as ev
from agents.runtime.consumer import (
    Backoff,
    ConsumerRuntime,
    Delivery,
    Handler,
    HandlerSink,
    Item,
    Linger,
    RuntimeHandle,
    Sink,
)
from agents.runtime.errors import PermanentError, TransientError
from agents.runtime.publisher import Publisher
from agents.runtime.settings import MeshSettings
from schemas.codec import Codec
from tests.kafka_support import produce_raw, read_all
from tests.mesh_support import own_topics
from tests.support import assert_eventually, envelope, samples, unique
from topics.catalogue import TOPIC_OF

pytestmark = pytest.mark.integration
ROLES = ("goals", "tasks", "results", "escalations", "deadletters")


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


@pytest.fixture
def publisher(mesh_settings: MeshSettings, codec: Codec) -> Iterator[Publisher]:
    pub = Publisher(settings=mesh_settings, codec=codec, client_id="test-publisher")
    yield pub
    pub.close()


def runtime(
    settings: MeshSettings,
    codec: Codec,
    publisher: Publisher,
    handlers: dict[type[ev.Event], Handler],
    roles: Iterable[str] = ROLES,
    *,
    group: str | None = None,
    sink: Sink | None = None,
    linger: Linger | None = None,
) -> ConsumerRuntime:
    return ConsumerRuntime(
        settings=settings,
        codec=codec,
        publisher=publisher,
        group_id=group or unique("g-"),
        roles=tuple(roles),
        sink=sink or HandlerSink(handlers),
        client_id="test-consumer",
        backoff=Backoff(initial_s=0.01, max_s=0.05),
        linger=linger,
    )


class BatchRecorder:
    """A sink that keeps the events of each batch it is handed, batch by batch."""

    accepts = frozenset(ev.EVENT_TYPES)

    def __init__(self) -> None:
        self.batches: list[list[ev.Event]] = []

    def handle(self, items: Sequence[Item], runtime: RuntimeHandle) -> Sequence[Delivery]:
        self.batches.append([item.event for item in items])
        return [item.delivery for item in items]

    def collect(self) -> Sequence[Delivery]:
        return ()

    def close(self) -> None:
        pass


def recorder(into: list[ev.Event]) -> Handler:
    def handle(event: ev.Event, delivery: Delivery) -> list[ev.Event]:
        into.append(event)
        return []

    return handle


def pump(consumer: ConsumerRuntime, done: object, *, timeout: float = 30.0) -> None:
    """Poll batches until ``done()`` holds."""
    assert callable(done)
    assert_eventually(lambda: consumer.poll_batch(0.2) >= 0 and done(), timeout=timeout)


def test_every_event_type_round_trips_through_kafka(
    mesh_settings: MeshSettings, codec: Codec, publisher: Publisher
) -> None:
    sent = samples(goal_id=unique("goal-"))
    for event in sent:
        publisher.publish(event, key=b"k" if isinstance(event, ev.DeadLetter) else None)
    publisher.flush()
    got: list[ev.Event] = []
    consumer = runtime(mesh_settings, codec, publisher, {t: recorder(got) for t in ev.EVENT_TYPES})
    try:
        pump(consumer, lambda: len(got) >= len(sent))
    finally:
        consumer.close()
    assert sorted(got, key=lambda e: e.schema_name) == sorted(sent, key=lambda e: e.schema_name)


def test_events_land_on_their_topic_with_their_key(
    mesh_settings: MeshSettings, publisher: Publisher
) -> None:
    event = samples()[2]  # TaskAssigned: keyed by task
    publisher.publish(event)
    publisher.flush()
    (record,) = read_all(mesh_settings, "tasks")
    assert record.key() == b"task-1"
    headers = dict(record.headers() or [])
    assert headers["mesh-type"] == b"mesh.TaskAssigned"
    assert TOPIC_OF[type(event)].role == "tasks"


def test_held_records_all_go_out_in_order_whichever_thread_flushes(
    mesh_settings: MeshSettings, codec: Codec, publisher: Publisher
) -> None:
    """``publish`` holds records until a ``flush``; threads publishing and flushing at once
    (a worker's pool) lose none, and each goal's records keep the order they were published in."""
    goals = [unique("goal-") for _ in range(4)]

    def publish_and_flush(goal_id: str) -> None:
        for n in range(60):
            publisher.publish(ev.GoalCancelled(envelope=envelope(goal_id), reason=str(n)))
            if n % 7 == 0:
                publisher.flush()
        publisher.flush()

    threads = [threading.Thread(target=publish_and_flush, args=(g,)) for g in goals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    reasons: dict[str, list[str]] = {g: [] for g in goals}
    for record in read_all(mesh_settings, "goals"):
        event = codec.decode(record.value())
        assert isinstance(event, ev.GoalCancelled)
        reasons[event.goal_id].append(event.reason)
    assert reasons == {g: [str(n) for n in range(60)] for g in goals}


def test_a_flush_waits_for_every_record_sent_since_the_last_one(publisher: Publisher) -> None:
    """A flush with nothing sent since the last returns at once; one after a send, whichever
    thread sent it, returns only when the broker has acknowledged it (the producer's linger
    would otherwise hold the record for a while)."""
    publisher.flush()
    publisher.flush()
    assert publisher.outstanding() == 0

    def send(reason: str) -> None:
        publisher.publish(ev.GoalCancelled(envelope=envelope("goal-f"), reason=reason))
        publisher.send_held()

    for n in range(3):
        sender = threading.Thread(target=send, args=(str(n),))
        sender.start()
        sender.join(10)
        publisher.flush()
        assert publisher.outstanding() == 0
        publisher.flush()  # nothing new: no wait, nothing outstanding either
        assert publisher.outstanding() == 0


def test_bad_records_go_to_dead_letters_and_the_consumer_goes_on(
    codec: Codec, stack_settings: MeshSettings
) -> None:
    with own_topics(stack_settings, max_event_bytes=4096) as settings:
        bad_records_go_to_dead_letters(codec, settings)


def bad_records_go_to_dead_letters(codec: Codec, settings: MeshSettings) -> None:
    publisher = Publisher(settings=settings, codec=codec, client_id="test-publisher")
    valid = ev.GoalCancelled(envelope=envelope("goal-ok"), reason="after the bad ones")
    rejected = ev.GoalCancelled(envelope=envelope("goal-rejected"), reason="refuse me")
    unknown = b"\xc3\x01" + b"\x13" * 8 + b"\x02"
    oversize = codec.encode(ev.GoalCancelled(envelope=envelope("goal-big"), reason="x" * 8000))
    raw = [
        (b"g-garbage", b"\x00not avro at all", [("origin", b"fuzz")]),
        (b"g-unknown", unknown, []),
        (b"g-big", oversize, [("size", b"big")]),
        (b"g-rejected", codec.encode(rejected), []),
        (b"g-ok", codec.encode(valid), []),
    ]
    produce_raw(settings, "goals", raw)
    handled: list[ev.Event] = []

    def handle(event: ev.Event, delivery: Delivery) -> list[ev.Event]:
        assert isinstance(event, ev.GoalCancelled)
        if event.reason == "refuse me":
            raise PermanentError("the handler refuses this goal")
        handled.append(event)
        return []

    consumer = runtime(settings, codec, publisher, {ev.GoalCancelled: handle}, roles=["goals"])
    letters: list[ev.Event] = []

    def all_read() -> bool:
        # The records sit on several partitions, so the valid one may be handled first.
        letters[:] = [codec.decode(m.value()) for m in read_all(settings, "deadletters")]
        return len(letters) >= 4

    try:
        pump(consumer, lambda: handled and all_read())
    finally:
        consumer.close()
    assert handled == [valid]
    by_key = {
        letter.original_key: letter for letter in letters if isinstance(letter, ev.DeadLetter)
    }
    assert len(letters) == 4 and len(by_key) == 4
    expected = {
        b"g-garbage": "undecodable",
        b"g-unknown": "unknown_schema",
        b"g-big": "oversize",
        b"g-rejected": "rejected",
    }
    originals = {key: (value, headers) for key, value, headers in raw}
    for key, category in expected.items():
        letter = by_key[key]
        assert letter.category == category
        assert letter.message
        assert letter.original_value == originals[key][0]
        assert [(h.key, h.value) for h in letter.original_headers] == originals[key][1]
        assert letter.source_topic == f"{settings.topic_prefix}goals"
        assert letter.source_offset >= 0
    publisher.close()


def test_transient_failures_retry_in_place_then_succeed(
    mesh_settings: MeshSettings, codec: Codec, publisher: Publisher
) -> None:
    publisher.publish(ev.GoalCancelled(envelope=envelope("goal-flaky")))
    publisher.flush()
    attempts: list[int] = []

    def flaky(event: ev.Event, delivery: Delivery) -> list[ev.Event]:
        attempts.append(delivery.offset)
        if len(attempts) < 3:
            raise TransientError("database briefly away")
        return []

    consumer = runtime(mesh_settings, codec, publisher, {ev.GoalCancelled: flaky}, ["goals"])
    try:
        pump(consumer, lambda: len(attempts) >= 3)
    finally:
        consumer.close()
    assert len(attempts) == 3 and len(set(attempts)) == 1
    assert read_all(mesh_settings, "deadletters") == []


def test_offsets_are_stored_only_for_handled_records(
    mesh_settings: MeshSettings, codec: Codec, publisher: Publisher
) -> None:
    """A record whose handler never finished is handed to the group's next consumer."""
    for reason in ("first", "second"):
        publisher.publish(ev.GoalCancelled(envelope=envelope("goal-same"), reason=reason))
    publisher.flush()
    group = unique("g-")
    seen: list[str] = []

    def stuck_on_second(event: ev.Event, delivery: Delivery) -> list[ev.Event]:
        assert isinstance(event, ev.GoalCancelled)
        seen.append(event.reason)
        if event.reason == "second":
            consumer.stop()  # the process is told to stop while this record keeps failing
            raise TransientError("dependency down")
        return []

    consumer = runtime(
        mesh_settings, codec, publisher, {ev.GoalCancelled: stuck_on_second}, ["goals"], group=group
    )
    try:
        pump(consumer, lambda: "second" in seen)
    finally:
        consumer.close()
    again: list[ev.Event] = []
    successor = runtime(
        mesh_settings, codec, publisher, {ev.GoalCancelled: recorder(again)}, ["goals"], group=group
    )
    try:
        pump(successor, lambda: again)
    finally:
        successor.close()
    assert [e.reason for e in again if isinstance(e, ev.GoalCancelled)] == ["second"]


def test_outputs_are_published_and_trace_context_crosses_the_hop(
    mesh_settings: MeshSettings, codec: Codec, publisher: Publisher
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    trace.set_tracer_provider(provider)  # first call wins for the process; the proxy follows it
    goal = ev.GoalSubmitted(envelope=envelope(unique("goal-")), text="trace me")
    with tracer.start_as_current_span("client submit") as root:
        publisher.publish(goal)
    publisher.flush()

    def plan(event: ev.Event, delivery: Delivery) -> list[ev.Event]:
        return [
            ev.GoalCancelled(
                envelope=ev.Envelope(goal_id=event.goal_id, causation_id=event.event_id)
            )
        ]

    consumer = runtime(mesh_settings, codec, publisher, {ev.GoalSubmitted: plan}, ["goals"])
    cancels: list[ev.Event] = []
    follower = runtime(
        mesh_settings, codec, publisher, {ev.GoalCancelled: recorder(cancels)}, ["goals"]
    )
    try:
        pump(
            consumer,
            lambda: any(s.name.startswith("process") for s in exporter.get_finished_spans()),
        )
        pump(follower, lambda: cancels)
    finally:
        consumer.close()
        follower.close()
    assert cancels[0].envelope.causation_id == goal.event_id
    trace_id = root.get_span_context().trace_id
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    by_type = {(s.attributes or {}).get("mesh.event.type"): s for s in spans}
    submitted, cancelled = by_type["mesh.GoalSubmitted"], by_type["mesh.GoalCancelled"]
    # Each hop's span is the child of the span in hand where its record was sent.
    assert submitted.parent is not None and cancelled.parent is not None
    assert submitted.parent.span_id == root.get_span_context().span_id
    assert cancelled.parent.span_id == submitted.context.span_id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_kafka_fails_fast_naming_the_fix() -> None:
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_free_port()}",
        "MESH_CONNECT_TIMEOUT_S": "3",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "agents.cli", "topics", "ensure"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in done.stderr and "make up" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 30  # generous: it must not hang, not be fast


def test_records_that_never_wait_are_handled_on_the_calling_thread(
    mesh_settings: MeshSettings, codec: Codec, publisher: Publisher
) -> None:
    threads: dict[str, str] = {}

    def handle(event: ev.Event, delivery: Delivery) -> list[ev.Event]:
        threads[event.goal_id] = threading.current_thread().name
        return []

    sink = HandlerSink(
        {ev.GoalCancelled: handle},
        concurrency=4,
        inline=lambda event: event.goal_id.startswith("quick"),
    )
    events = [
        ev.GoalCancelled(envelope=envelope(f"{kind}-{n}"))
        for kind in ("quick", "slow")
        for n in range(3)
    ]
    items = [Item(e, Delivery("t", 0, n, None, (), 0, None)) for n, e in enumerate(events)]
    consumer = runtime(mesh_settings, codec, publisher, {}, ["goals"])
    try:
        done = list(sink.handle(items, consumer))  # those handled here; the pool's run on
    finally:
        consumer.close()
        sink.close()
    done += sink.collect()
    assert sorted(d.offset for d in done) == list(range(6))
    here = threading.current_thread().name
    assert {threads[f"quick-{n}"] for n in range(3)} == {here}
    assert here not in {threads[f"slow-{n}"] for n in range(3)}


def test_a_batch_of_outcomes_waits_for_what_follows_them_and_no_longer(
    mesh_settings: MeshSettings, codec: Codec, publisher: Publisher
) -> None:
    """With a ``Linger`` on outcomes, a verdict published after its outcome was fetched comes in
    the outcome's batch, and the wait ends when the verdict arrives, not at the linger's end;
    a batch holding anything else is handed over at once."""
    events = samples(unique("goal-"))
    outcome, verdict, ended = events[3], events[5], events[6]
    recorder = BatchRecorder()
    linger = Linger(frozenset({ev.TaskCompleted}), seconds=60.0)
    consumer = runtime(
        mesh_settings, codec, publisher, {}, ["results"], sink=recorder, linger=linger
    )
    later = Publisher(settings=mesh_settings, codec=codec, client_id="test-later")

    def send_verdict() -> None:
        later.publish(verdict)
        later.flush()

    timer = threading.Timer(1.0, send_verdict)
    try:
        publisher.publish(ended)  # not an outcome: handled without waiting (a minute)
        publisher.flush()
        pump(consumer, lambda: bool(recorder.batches), timeout=30)
        publisher.publish(outcome)
        publisher.flush()
        timer.start()  # the verdict comes a second later, while the outcome's batch waits
        started = time.monotonic()
        pump(consumer, lambda: len(recorder.batches) >= 2, timeout=30)
    finally:
        timer.cancel()
        later.close()
        consumer.close()
    assert recorder.batches == [[ended], [outcome, verdict]]
    assert time.monotonic() - started < 30  # ended by the verdict, not by the linger


def test_a_consumer_fenced_by_a_newer_one_with_its_instance_name_raises(
    mesh_settings: MeshSettings, codec: Codec, publisher: Publisher
) -> None:
    """Static membership: a restarted process takes its name back, and the one it replaced (a
    paused process resuming) cannot consume again, so it ends instead of idling."""
    settings = mesh_settings.model_copy(update={"instance": unique("agent-")})
    publisher.publish(ev.GoalCancelled(envelope=envelope(unique("goal-")), reason="first"))
    publisher.flush()
    group = unique("g-")
    seen: list[ev.Event] = []
    handlers: dict[type[ev.Event], Handler] = {ev.GoalCancelled: recorder(seen)}
    first = runtime(settings, codec, publisher, handlers, ["goals"], group=group)
    pump(first, lambda: seen)
    second = runtime(settings, codec, publisher, {}, ["goals"], group=group)  # joins at once
    try:
        deadline = time.monotonic() + 30
        with pytest.raises(KafkaException, match="fenced"):
            while time.monotonic() < deadline:
                second.poll_batch(0.2)
                first.poll_batch(0.2)
    finally:
        second.close()
    assert len(seen) == 1


def test_a_slow_call_holds_up_no_other_record_of_its_partition(
    mesh_settings: MeshSettings, codec: Codec, publisher: Publisher
) -> None:
    gate = threading.Event()
    seen: list[str] = []

    def handle(event: ev.Event, delivery: Delivery) -> list[ev.Event]:
        assert isinstance(event, ev.GoalCancelled)
        if event.reason == "slow":
            gate.wait(30)
        seen.append(event.reason)
        return []

    for reason in ("slow", "fast", "faster"):  # one goal: one key, one partition, this order
        publisher.publish(ev.GoalCancelled(envelope=envelope("goal-same"), reason=reason))
    publisher.flush()
    sink = HandlerSink({ev.GoalCancelled: handle}, concurrency=2)
    consumer = runtime(mesh_settings, codec, publisher, {}, ["goals"], sink=sink)
    try:
        pump(consumer, lambda: {"fast", "faster"} <= set(seen))
        overtaken = "slow" not in seen
    finally:
        gate.set()
        consumer.close()
    assert overtaken
    assert sorted(seen) == ["fast", "faster", "slow"]
