"""The chaos suite's fault schedule and bookkeeping, on stand-in agents and a stand-in clock."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.runtime.fleet import AgentProcess
from chaos._faults import RESTART_DELAY_MAX_S, FaultKind, FaultPlan, Faults, choose, next_gap
from chaos._observe import _per_goal
from chaos._verdict import EffectRows

pytestmark = pytest.mark.unit


@dataclass
class StandIn(AgentProcess):
    """An agent that runs no process: starts and kills are counted."""

    up: bool = True
    starts: int = 0

    def start(self) -> None:
        self.up, self.starts = True, self.starts + 1

    def alive(self) -> bool:
        return self.up

    def kill(self) -> None:
        self.up = False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fleet() -> list[StandIn]:
    return [StandIn(name, (name,), {}, Path()) for name in ("planner", "worker-1", "evaluator")]


def faults_for(
    members: list[StandIn], clock: Clock, *, every: float, pause_ratio: float, seed: int
) -> Faults:
    plan = FaultPlan(every=every, pause_ratio=pause_ratio, pause_s=5.0)
    return Faults(members, plan, random.Random(seed), clock)


def test_faults_come_every_few_seconds_on_average_and_pauses_at_their_ratio() -> None:
    rng = random.Random(1)
    gaps = [next_gap(rng, 3.0) for _ in range(1000)]
    assert min(gaps) >= 1.5 and max(gaps) <= 4.5 and 2.8 < sum(gaps) / len(gaps) < 3.2
    kinds = Counter(choose(rng, ["a", "b"], 0.2)[0] for _ in range(1000))
    assert 150 < kinds[FaultKind.PAUSE] < 250


def test_a_killed_agent_comes_back_and_a_paused_one_is_resumed() -> None:
    clock, members = Clock(), fleet()
    faults = faults_for(members, clock, every=3.0, pause_ratio=0.5, seed=2)
    for _ in range(200):  # 200 s: about 66 faults
        clock.now += 1.0
        faults.tick()
    assert faults.count(FaultKind.KILL) + faults.count(FaultKind.PAUSE) > 40
    assert faults.count(FaultKind.CRASH) == 0
    faults.calm()
    assert all(m.alive() for m in members)
    assert sum(m.starts for m in members) == faults.count(FaultKind.KILL)


def test_no_fault_strikes_an_agent_that_is_down_or_paused_already() -> None:
    clock, members = Clock(), fleet()
    faults = faults_for(members, clock, every=0.1, pause_ratio=0.0, seed=3)
    clock.now += 0.2
    for _ in range(10):  # the restart delay has not passed: each agent is killed once at most
        faults.tick()
        clock.now += RESTART_DELAY_MAX_S / 100
    assert faults.count(FaultKind.KILL) <= len(members)
    assert Counter(r.agent for r in faults.records).most_common(1)[0][1] == 1


def test_an_agent_that_exits_by_itself_is_restarted_and_counted() -> None:
    clock, members = Clock(), fleet()
    faults = faults_for(members, clock, every=0.0, pause_ratio=0.2, seed=4)
    members[1].up = False
    faults.tick()
    assert [(r.kind, r.agent) for r in faults.records] == [(FaultKind.CRASH, "worker-1")]
    assert members[1].alive()


def test_no_faults_when_told_none() -> None:
    clock, members = Clock(), fleet()
    faults = faults_for(members, clock, every=0.0, pause_ratio=0.2, seed=5)
    for _ in range(100):
        clock.now += 1.0
        faults.tick()
    assert faults.records == []


def test_effect_rows_add_up_per_goal() -> None:
    keys = [("g1", 1, 1), ("g1", 1, 0), ("g2", 2, 1)]  # (goal, rows under a key, live rows)
    assert _per_goal(keys) == {
        "g1": EffectRows(rows=2, live=1, most_per_key=1),
        "g2": EffectRows(rows=2, live=1, most_per_key=2),
    }
