"""Reading and writing raw records in tests, against the real broker."""

from __future__ import annotations

import time
from collections.abc import Sequence

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from agents.runtime.kafka import client_config, watermarks
from agents.runtime.settings import MeshSettings
from topics.catalogue import spec_for


def produce_raw(
    settings: MeshSettings,
    role: str,
    records: Sequence[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
) -> None:
    """Write (key, value, headers) records as they are, bypassing the codec."""
    producer = Producer(client_config(settings, client_id="test-raw") | {"acks": "all"})
    topic = spec_for(role).name(settings.topic_prefix)
    for key, value, headers in records:
        producer.produce(topic, value, key, headers=list(headers))
    assert producer.flush(30) == 0


def read_all(settings: MeshSettings, role: str, *, timeout: float = 30.0) -> list[Message]:
    """Every record now in the topic of ``role``, in partition then offset order."""
    topic = spec_for(role).name(settings.topic_prefix)
    consumer = Consumer(
        client_config(settings, client_id="test-reader")
        | {"group.id": "test-reader", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: watermarks(consumer, topic, p) for p in partitions}
        wanted = {p: hi for p, (lo, hi) in ends.items() if hi > lo}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in wanted])
        return _drain(consumer, wanted, timeout)
    finally:
        consumer.close()


def _drain(consumer: Consumer, wanted: dict[int, int], timeout: float) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    remaining = dict(wanted)
    while remaining:
        if time.monotonic() > deadline:
            raise AssertionError(f"could not read to the end of partitions {sorted(remaining)}")
        for message in consumer.consume(500, 0.5):
            if message.error():
                continue
            got.append(message)
            partition, offset = message.partition(), message.offset()
            if partition in remaining and offset is not None and offset + 1 >= remaining[partition]:
                del remaining[partition]
    return sorted(got, key=lambda m: (m.partition() or 0, m.offset() or 0))
