"""The Celery lane's collector lands a goal once, whether pub/sub announced it or a read after a
stall found it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.driver import Deadline, Window
from bench.peers.celery_lane import _Collector

pytestmark = pytest.mark.unit


@dataclass
class _Result:
    """What the collector uses of a Celery ``AsyncResult``."""

    id: str
    done: bool
    result: list[Any] = field(default_factory=lambda: [6, 0.0, [0.001, 0.002]])
    on_ready: Callable[[_Result], None] | None = None  # a callback that fires on the first look

    def ready(self) -> bool:
        if self.done and self.on_ready is not None:
            callback, self.on_ready = self.on_ready, None
            callback(self)
        return self.done

    def failed(self) -> bool:
        return False


def _collector(*results: _Result) -> tuple[_Collector, Window]:
    window = Window(goals=len(results), in_flight=len(results), deadline=Deadline("test"))
    collector = _Collector(None, "chain", window)
    for result in results:
        window.submitted_at[result.id] = 0.0
        collector.pending[result.id] = result
    window.next_goal = len(results)
    return collector, window


def test_a_stalled_goal_is_read_from_the_backend_and_landed_once() -> None:
    finished, running = _Result("a", done=True), _Result("b", done=False)
    collector, window = _collector(finished, running)

    collector.read_stalled()

    assert collector.recovered == 1
    assert list(collector.pending) == ["b"]
    assert list(window.submitted_at) == ["b"]
    assert collector.overheads == [0.001, 0.002]
    collector._landed(finished)  # its announcement arrives after all
    assert collector.overheads == [0.001, 0.002]
    assert len(window.latencies) == 1


def test_an_announced_goal_is_not_counted_as_recovered() -> None:
    finished = _Result("a", done=True)
    collector, window = _collector(finished)

    collector._landed(finished)
    collector.read_stalled()

    assert collector.recovered == 0
    assert window.finished()
    assert collector.overheads == [0.001, 0.002]


def test_a_result_whose_look_fires_its_callback_lands_once_and_is_not_recovered() -> None:
    finished, running = _Result("a", done=True), _Result("b", done=False)
    collector, window = _collector(finished, running)
    finished.on_ready = collector._landed

    collector.read_stalled()

    assert collector.recovered == 0
    assert list(collector.pending) == ["b"]
    assert len(window.latencies) == 1
