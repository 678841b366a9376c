"""Event and entity ids: version-7 UUIDs, unique and in time order."""

from __future__ import annotations

import time
import uuid

from agents.events import new_id


def test_ids_are_version_7_uuids_in_hex() -> None:
    value = new_id()
    parsed = uuid.UUID(hex=value)
    assert len(value) == 32
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_ids_carry_the_millisecond_they_were_made() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= int(value[:12], 16) <= after


def test_ids_made_later_sort_later_and_none_repeats() -> None:
    first = [new_id() for _ in range(1000)]
    deadline = time.monotonic() + 1.0
    while time.time_ns() // 1_000_000 <= int(first[-1][:12], 16):  # the next millisecond
        assert time.monotonic() < deadline
    later = new_id()
    assert len(set(first)) == len(first)
    assert later > max(first)
