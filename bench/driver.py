"""Keeping a number of goals in flight and timing them, within a deadline: shared by every lane."""

from __future__ import annotations

import time
from collections.abc import Callable

from bench.model import load_label

SHAPES = {"chain": 6, "fanout": 20}


def peer_tasks_per_goal(shape: str) -> int:
    """Tasks of one goal in the peer lanes, whose fan-outs end with a join task of their own."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} (chain or fanout)")
    return SHAPES[shape] + (1 if shape == "fanout" else 0)


LANE_DEADLINE_S = 180.0  # no peer lane run may take longer than this, start-up included


class LaneTimeout(TimeoutError):
    """A lane did not finish inside its deadline."""


class Deadline:
    """One wall-clock budget for a whole lane run, checked at every wait."""

    def __init__(self, what: str, seconds: float = LANE_DEADLINE_S) -> None:
        self.what = what
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def left(self) -> float:
        return self.ends - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise LaneTimeout(f"{self.what} did not finish within {self.seconds:.0f} s")


def offered(
    *, shape: str, goals: int, in_flight: int, deadline: Deadline, rate: float | None
) -> Window:
    """A window for a lane run: ``in_flight`` goals outstanding or, with ``rate`` (tasks a
    second of ``shape``'s goals), goals offered on that schedule."""
    if rate is None:
        return Window(goals=goals, in_flight=in_flight, deadline=deadline)
    window = Window(goals=goals, in_flight=in_flight, deadline=deadline, rate=rate / SHAPES[shape])
    window.load = load_label(in_flight, rate)
    return window


class Window:
    """At most in_flight goals outstanding; each goal's latency is submit → result seen.

    With ``rate`` (goals a second) goals are offered on a fixed schedule instead, the n-th at
    n/rate seconds after the start, whether or not earlier ones finished (in_flight still caps
    what is outstanding, as a safety bound)."""

    def __init__(
        self, *, goals: int, in_flight: int, deadline: Deadline, rate: float | None = None
    ) -> None:
        self.goals = goals
        self.in_flight = max(1, in_flight)
        self.deadline = deadline
        self.rate = rate
        self.load = load_label(in_flight)
        self._began = time.perf_counter()
        self.submitted_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.results: list[object] = []
        self.next_goal = 0

    def refill(self, submit: Callable[[int], str]) -> None:
        """Submit goals until in_flight are outstanding or none are left."""
        while (
            self.next_goal < self.goals
            and len(self.submitted_at) < self.in_flight
            and self._due(self.next_goal)
        ):
            started = time.perf_counter()
            key = submit(self.next_goal)
            self.submitted_at[key] = started
            self.next_goal += 1

    def _due(self, n: int) -> bool:
        return self.rate is None or time.perf_counter() - self._began >= n / self.rate

    def done(self, key: str, result: object = None, at: float | None = None) -> None:
        """Goal ``key`` finished; a goal this window did not submit (a warm-up's) is ignored."""
        began = self.submitted_at.pop(key, None)
        if began is not None:
            self.latencies.append((at or time.perf_counter()) - began)
            self.results.append(result)

    def finished(self) -> bool:
        return self.next_goal >= self.goals and not self.submitted_at

    def run(self, submit: Callable[[int], str], collect: Callable[[list[str]], None]) -> float:
        """Drive every goal to completion; collect(outstanding) must call done() for the goals
        it sees finish and return soon when none do. Returns the wall time."""
        began = self._began = time.perf_counter()
        while not self.finished():
            self.deadline.check()
            self.refill(submit)
            collect(list(self.submitted_at))
        return time.perf_counter() - began

    def run_polling(self, submit: Callable[[int], str], poll: Callable[[], list[str]]) -> float:
        """``run`` with a ``poll`` that returns the goals it saw finish."""

        def collect(_outstanding: list[str]) -> None:
            for key in poll():
                self.done(key)

        return self.run(submit, collect)
