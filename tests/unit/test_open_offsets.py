"""What a consumer may store: never past a record still in hand, whatever finished after it."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition

from agents.runtime.consumer import Delivery, OpenOffsets

pytestmark = pytest.mark.unit


def record(offset: int, partition: int = 0) -> Delivery:
    return Delivery("tasks", partition, offset, None, (), 0, None)


def stored(offsets: OpenOffsets) -> dict[int, int]:
    return {tp.partition: tp.offset for tp in offsets.storable()}


def test_a_record_finished_early_waits_for_those_before_it() -> None:
    offsets = OpenOffsets()
    slow, fast, faster = record(10), record(11), record(12)
    for d in (slow, fast, faster):
        offsets.take(d)

    offsets.finish([fast, faster])
    held = stored(offsets)
    offsets.finish([slow])

    assert held == {}
    assert stored(offsets) == {0: 13}
    assert stored(offsets) == {}  # each offset is stored once


def test_partitions_are_apart() -> None:
    offsets = OpenOffsets()
    slow, other = record(5, partition=0), record(7, partition=1)
    offsets.take(slow)
    offsets.take(other)
    offsets.finish([other])
    assert stored(offsets) == {1: 8}


def test_a_record_of_a_partition_since_lost_or_taken_again_finishes_nothing() -> None:
    offsets = OpenOffsets()
    first = record(3)
    offsets.take(first)
    offsets.forget([TopicPartition("tasks", 0)])  # the partition went to another consumer
    again = record(3)  # the partition came back; the record was delivered anew
    offsets.take(again)
    offsets.finish([first])  # the old call ends late
    assert stored(offsets) == {}
    offsets.finish([again])
    assert stored(offsets) == {0: 4}
