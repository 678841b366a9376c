"""Reading and writing raw records in tests, against the real broker."""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from agents.runtime.kafka import client_config, watermarks
from agents.runtime.settings import MeshSettings
from infra import stack
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


def produce_raw_headers(
    settings: MeshSettings,
    role: str,
    key: bytes,
    value: bytes,
    headers: Sequence[tuple[bytes, bytes]],
) -> None:
    """Write one record to partition 0 of ``role``'s topic with header names as raw bytes, in a
    Produce request of the wire protocol: Kafka takes any bytes as a header name, a Go producer
    can write them, and the Python client writes only UTF-8. The local broker is the leader of
    every partition."""
    batch = _record_batch(key, value, headers)
    topic = spec_for(role).name(settings.topic_prefix).encode()
    body = (
        struct.pack(">hhi", -1, -1, 10_000)  # no transactional id, acks=all, timeout
        + struct.pack(">ih", 1, len(topic))
        + topic
        + struct.pack(">iii", 1, 0, len(batch))
        + batch
    )
    port = int(settings.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
    deadline = time.monotonic() + 10
    while True:
        answer = stack.kafka_call(port, _PRODUCE, 3, body, timeout=10.0)
        # responses: [topic name, [partition, error_code, base_offset, log_append_time]], ...
        (name_length,) = struct.unpack_from(">h", answer, 4)
        (error_code,) = struct.unpack_from(">h", answer, 4 + 2 + name_length + 4 + 4)
        # A topic created a moment ago has no leader yet (NOT_LEADER_OR_FOLLOWER).
        if error_code != _NOT_LEADER or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert error_code == 0, f"the broker refused the record: error code {error_code}"


_PRODUCE = 0
_NOT_LEADER = 6


def _record_batch(key: bytes, value: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A v2 record batch holding one record (KIP-98's layout)."""
    record = (
        b"\x00"  # attributes
        + _varint(0)  # timestamp delta
        + _varint(0)  # offset delta
        + _varint(len(key))
        + key
        + _varint(len(value))
        + value
        + _varint(len(headers))
        + b"".join(_varint(len(k)) + k + _varint(len(v)) + v for k, v in headers)
    )
    record = _varint(len(record)) + record
    now_ms = int(time.time() * 1000)
    # attributes, last offset delta, first and max timestamp, producer id and epoch, base
    # sequence, record count: the part the CRC covers
    tail = struct.pack(">hiqqqhii", 0, 0, now_ms, now_ms, -1, -1, -1, 1) + record
    crc = _crc32c(tail)
    # base offset, batch length (from the partition leader epoch on), leader epoch, magic, crc
    head = struct.pack(">qiibI", 0, 4 + 1 + 4 + len(tail), -1, 2, crc)
    return head + tail


def _varint(n: int) -> bytes:
    """A zigzag varint, as record fields are written."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC32C[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFFFFFF
