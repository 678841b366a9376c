"""One hop of the raw lanes: consume a topic, produce a record for each to the next, store
offsets after the batch is acknowledged. The same client settings as the mesh.

R0 passes the bytes on untouched. R1 (``--avro``) does the mesh's Avro work as well: it decodes
each record with the codec and encodes the event the next role would send (a task becomes a
result, a result a verdict), but touches no database; other events (a verdict or a goal's end
on the mesh's results topic, in R2) it decodes and drops.

    python -m bench.relay FROM_TOPIC TO_TOPIC GROUP [--avro]
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import Consumer, Producer, TopicPartition

from agents import events as ev
from agents.runtime.kafka import consumer_config, fetch, producer_config
from agents.runtime.settings import MeshSettings
from schemas.codec import Codec

Transform = Callable[[bytes | None], bytes | None]
"""A record's value to the value to send on; None: nothing to send."""


def untouched(value: bytes | None) -> bytes | None:
    return value


def next_event(codec: Codec) -> Transform:
    """Decode the record and encode what the next role would answer with."""

    def answer(value: bytes | None) -> bytes | None:
        event = codec.decode(value)
        env = ev.Envelope(goal_id=event.goal_id, causation_id=event.event_id)
        if isinstance(event, ev.TaskAssigned):
            now = datetime.now(UTC)
            reply: ev.Event = ev.TaskCompleted(
                envelope=env,
                task_id=event.task_id,
                step_id=event.step_id,
                tool=event.tool,
                attempt=event.attempt,
                result=event.arguments,
                worker_id="relay",
                started_at=now,
                finished_at=now,
                arguments=event.arguments,
            )
        elif isinstance(event, ev.TaskCompleted):
            reply = ev.TaskEvaluated(
                envelope=env,
                task_id=event.task_id,
                step_id=event.step_id,
                attempt=event.attempt,
                decision="accept",
                confidence=1.0,
                reason="relay",
            )
        else:
            return None  # not for this hop
        return codec.encode(reply)

    return answer


def main(source: str, target: str, group: str, *flags: str) -> int:
    settings = MeshSettings()
    transform = next_event(Codec()) if "--avro" in flags else untouched
    consumer = Consumer(consumer_config(settings, client_id="relay", group_id=group))
    producer = Producer(producer_config(settings, client_id="relay"))
    consumer.subscribe([source])
    running = {"on": True}
    signal.signal(signal.SIGTERM, lambda *_: running.update(on=False))
    while running["on"]:
        batch = [m for m in fetch(consumer, 500, 0.1) if not m.error()]
        for m in batch:
            value = transform(m.value())
            if value is not None:
                producer.produce(target, value, m.key(), headers=m.headers())
        producer.flush()
        last: dict[int, int] = {}
        for m in batch:
            last[m.partition() or 0] = m.offset() or 0
        if last:
            consumer.store_offsets(
                offsets=[TopicPartition(source, p, o + 1) for p, o in last.items()]
            )
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
