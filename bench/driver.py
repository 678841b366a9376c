"""Keeping a number of goals in flight and timing them: shared by the raw and the mesh lanes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

SHAPES = {"chain": 6, "fanout": 20}


def peer_tasks_per_goal(shape: str) -> int:
    """Tasks of one goal in the peer lanes, whose fan-outs end with a join task of their own."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} (chain or fanout)")
    return SHAPES[shape] + (1 if shape == "fanout" else 0)


@dataclass
class Flight:
    """Goals submitted, outstanding and done, with their latencies."""

    goals: int
    in_flight: int
    started: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    submitted: int = 0

    def top_up(self, submit: Callable[[int], str]) -> None:
        """Submit goals until ``in_flight`` are outstanding or all were submitted."""
        while self.submitted < self.goals and len(self.started) < self.in_flight:
            goal_id = submit(self.submitted)
            self.started[goal_id] = time.perf_counter()
            self.submitted += 1

    def done(self, goal_id: str) -> None:
        began = self.started.pop(goal_id, None)
        if began is not None:
            self.latencies.append(time.perf_counter() - began)

    @property
    def finished(self) -> bool:
        return len(self.latencies) >= self.goals


def run_flight(
    flight: Flight,
    *,
    submit: Callable[[int], str],
    poll: Callable[[], list[str]],
    timeout: float,
) -> float:
    """Drive goals to completion; returns the wall time. ``poll`` returns goals just finished."""
    began = time.perf_counter()
    deadline = began + timeout
    flight.top_up(submit)
    while not flight.finished:
        if time.perf_counter() > deadline:
            raise TimeoutError(
                f"{len(flight.latencies)} of {flight.goals} goals done in {timeout:g}s"
            )
        for goal_id in poll():
            flight.done(goal_id)
        flight.top_up(submit)
    return time.perf_counter() - began
