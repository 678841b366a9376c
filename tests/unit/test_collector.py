"""The garbage collector's tuning in agent processes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from agents.runtime.app import GC_THRESHOLDS, tune_collector

pytestmark = pytest.mark.unit


class _Node:
    peer: _Node | None = None


@pytest.fixture
def tuned() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        tune_collector()
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.usefixtures("tuned")
def test_start_up_objects_are_left_out_and_collections_come_later() -> None:
    assert gc.get_freeze_count() > 0  # what existed at start-up is no longer scanned
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # less often than Python's default


@pytest.mark.usefixtures("tuned")
def test_cycles_made_afterwards_are_still_collected() -> None:
    node = _Node()
    node.peer = node  # a cycle: reference counting alone never frees it
    gone = weakref.ref(node)
    del node
    assert gone() is not None
    gc.collect()
    assert gone() is None
