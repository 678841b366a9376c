"""``mesh tail``: follow the results topic, decoded, optionally for one goal."""

from __future__ import annotations

import json
import signal
import time
import uuid

from confluent_kafka import Consumer

from agents import events as ev
from agents.runtime.errors import PoisonRecord
from agents.runtime.kafka import check_kafka, client_config
from agents.runtime.settings import MeshSettings
from schemas.codec import Codec
from topics.catalogue import RESULTS


def tail(
    settings: MeshSettings,
    *,
    goal: str | None = None,
    as_json: bool = False,
    from_beginning: bool = False,
    max_seconds: float | None = None,
) -> int:
    check_kafka(settings)
    codec = Codec()
    consumer = Consumer(
        client_config(settings, client_id="mesh-tail")
        | {
            "group.id": f"mesh-tail-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning or goal else "latest",
        }
    )
    consumer.subscribe([RESULTS.name(settings.topic_prefix)])
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    deadline = time.monotonic() + max_seconds if max_seconds else None
    try:
        while not stop["now"] and (deadline is None or time.monotonic() < deadline):
            for message in consumer.consume(100, 0.5):
                if message.error():
                    continue
                _show(codec, message.value(), goal, as_json)
    finally:
        consumer.close()
    return 0


def _show(codec: Codec, value: bytes | None, goal: str | None, as_json: bool) -> None:
    try:
        event = codec.decode(value)
    except PoisonRecord as exc:
        print(f"(undecodable record: {exc})", flush=True)
        return
    if goal and event.goal_id != goal:
        return
    if as_json:
        print(json.dumps({"type": event.schema_name, **event.model_dump(mode="json")}), flush=True)
    else:
        print(describe(event), flush=True)


def describe(event: ev.Event) -> str:
    """One readable line for an event."""
    when = event.envelope.occurred_at.strftime("%H:%M:%S.%f")[:-3]
    head = f"{when} {event.goal_id[:12]} {type(event).__name__:<14}"
    if isinstance(event, ev.TaskCompleted | ev.TaskFailed | ev.TaskEvaluated):
        detail = f"{event.step_id} attempt {event.attempt}"
        if isinstance(event, ev.TaskFailed):
            detail += f" {event.category}: {event.message}"
        if isinstance(event, ev.TaskEvaluated):
            detail += f" -> {event.decision} ({event.confidence:.2f}) {event.reason}"
        return f"{head} {detail}"
    if isinstance(event, ev.GoalFailed):
        return f"{head} {event.category}: {event.message}"
    if isinstance(event, ev.GoalCompleted):
        return f"{head} {event.summary}"
    if isinstance(event, ev.TaskAssigned):
        return f"{head} {event.step_id} attempt {event.attempt} -> {event.tool} [{event.pool}]"
    return head
