"""A goal's whole history, read back from Kafka alone: the basis for replay and audit.

Events of one goal are keyed by ``goal_id`` on ``goals``, ``results`` and ``escalations``, so each
of those topics holds them on one partition in the order they happened; tasks are keyed by task.
The merged history orders events by cause: an event never comes before the event it answers
(``causation_id``), and otherwise by the time it occurred.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from confluent_kafka import Consumer, TopicPartition

from agents import events as ev
from agents.runtime.errors import PoisonRecord
from agents.runtime.kafka import client_config, watermarks
from agents.runtime.settings import MeshSettings
from schemas.codec import Codec
from topics.catalogue import ESCALATIONS, GOALS, RESULTS, TASKS, TopicSpec

HISTORY_TOPICS = (GOALS, TASKS, RESULTS, ESCALATIONS)


def goal_history(settings: MeshSettings, goal_id: str, *, timeout: float = 30.0) -> list[ev.Event]:
    """Every event of ``goal_id`` now in the log, in causal order."""
    codec = Codec()
    found: list[ev.Event] = []
    consumer = Consumer(
        client_config(settings, client_id="mesh-history")
        | {"group.id": f"mesh-history-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
    )
    try:
        for spec in HISTORY_TOPICS:
            found += [
                e for e in _read(consumer, codec, settings, spec, timeout) if e.goal_id == goal_id
            ]
    finally:
        consumer.close()
    return causal_order(found)


def _read(
    consumer: Consumer, codec: Codec, settings: MeshSettings, spec: TopicSpec, timeout: float
) -> list[ev.Event]:
    topic = spec.name(settings.topic_prefix)
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    ends = {}
    for p in meta.partitions:
        low, high = watermarks(consumer, topic, p)
        if high > low:
            ends[p] = (low, high)
    consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
    events: list[ev.Event] = []
    deadline = time.monotonic() + timeout
    remaining = {p: high for p, (_, high) in ends.items()}
    while remaining and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            if message.error():
                continue
            partition, offset = message.partition(), message.offset()
            if offset is not None and partition in remaining and offset + 1 >= remaining[partition]:
                del remaining[partition]
            try:
                events.append(codec.decode(message.value()))
            except PoisonRecord:
                continue  # dead letters hold these; history is about events
    consumer.unassign()
    return events


def causal_order(events: Iterable[ev.Event]) -> list[ev.Event]:
    """Order by time, moving any event that came out before its cause to just after it."""
    by_time = sorted(events, key=lambda e: e.envelope.occurred_at)
    placed: list[ev.Event] = []
    seen: set[str] = set()
    waiting: dict[str, list[ev.Event]] = {}
    ids = {e.event_id for e in by_time}

    def place(event: ev.Event) -> None:
        placed.append(event)
        seen.add(event.event_id)
        for follower in waiting.pop(event.event_id, []):
            place(follower)

    for event in by_time:
        cause = event.envelope.causation_id
        if cause and cause in ids and cause not in seen:
            waiting.setdefault(cause, []).append(event)
        else:
            place(event)
    return placed + [e for group in waiting.values() for e in group]
