"""The faults: every few seconds a random agent is SIGKILLed (and restarted after a short random
delay) or SIGSTOPped for longer than the lease TTL (then SIGCONTed), and any agent that exits by
itself is restarted. Driven by ``tick`` from the run's single loop, so nothing here sleeps."""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from agents.runtime.fleet import AgentProcess

log = logging.getLogger(__name__)

RESTART_DELAY_MAX_S = 1.0  # a killed agent comes back within this, as a supervisor would


class FaultKind(StrEnum):
    """What the harness did to an agent."""

    KILL = "kill"
    """SIGKILL: a crash, with no clean-up; restarted shortly after."""
    PAUSE = "pause"
    """SIGSTOP, then SIGCONT after the pause: a hung process, which its leases outlive."""
    CRASH = "crash"
    """Not a fault the harness made: the agent exited by itself and was restarted."""


@dataclass(frozen=True)
class FaultRecord:
    at_s: float  # seconds since the run's faults began
    kind: FaultKind
    agent: str


@dataclass(frozen=True)
class FaultPlan:
    """How often and how faults strike; ``every`` 0 means never."""

    every: float
    pause_ratio: float
    pause_s: float


def next_gap(rng: random.Random, every: float) -> float:
    """Seconds to the next fault: ``every`` on average, never in lock-step with the mesh's own
    timers (heartbeats, sweeps)."""
    return every * rng.uniform(0.5, 1.5)


def choose(rng: random.Random, names: Sequence[str], pause_ratio: float) -> tuple[FaultKind, str]:
    """The next fault and its target among ``names``."""
    kind = FaultKind.PAUSE if rng.random() < pause_ratio else FaultKind.KILL
    return kind, rng.choice(list(names))


@dataclass
class Faults:
    """Injects faults into a running fleet and brings every agent back afterwards."""

    members: Sequence[AgentProcess]
    plan: FaultPlan
    rng: random.Random
    clock: Callable[[], float] = time.monotonic
    started: float = 0.0
    records: list[FaultRecord] = field(default_factory=list)
    _next_at: float = 0.0
    _resume_at: dict[str, float] = field(default_factory=dict)  # paused agents
    _restart_at: dict[str, float] = field(default_factory=dict)  # killed agents

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._next_at = self.started + next_gap(self.rng, self.plan.every)

    def count(self, kind: FaultKind) -> int:
        return sum(r.kind is kind for r in self.records)

    def tick(self, *, inject: bool = True) -> None:
        """Resume and restart what is due, restart crashed agents, and strike when it is time."""
        now = self.clock()
        for member in self.members:
            self._bring_back(member, now)
        if inject and self.plan.every > 0 and now >= self._next_at:
            self._strike(now)
            self._next_at = now + next_gap(self.rng, self.plan.every)

    def calm(self) -> None:
        """End every fault now: resume the paused, restart the killed."""
        for name in list(self._resume_at):
            self._resume_at[name] = 0.0
        for name in list(self._restart_at):
            self._restart_at[name] = 0.0
        for member in self.members:
            self._bring_back(member, self.clock())

    def resume_paused(self) -> None:
        """SIGCONT every paused agent now (and restart nothing): for stopping the fleet."""
        for member in self.members:
            if member.name in self._resume_at:
                _signal(member, signal.SIGCONT)
        self._resume_at.clear()

    def _bring_back(self, member: AgentProcess, now: float) -> None:
        name = member.name
        if name in self._resume_at:
            if now >= self._resume_at[name]:
                del self._resume_at[name]
                _signal(member, signal.SIGCONT)
            return
        if name in self._restart_at:
            if now >= self._restart_at[name]:
                del self._restart_at[name]
                member.start()
            return
        if not member.alive():
            code = member.proc.returncode if member.proc else None
            log.warning("%s exited by itself (code %s); restarting it", name, code)
            self._record(FaultKind.CRASH, name, now)
            member.kill()  # reap it and close its log
            member.start()

    def _strike(self, now: float) -> None:
        ready = [m.name for m in self.members if m.name not in self._resume_at | self._restart_at]
        if not ready:
            return
        kind, name = choose(self.rng, ready, self.plan.pause_ratio)
        member = next(m for m in self.members if m.name == name)
        if kind is FaultKind.PAUSE:
            _signal(member, signal.SIGSTOP)
            self._resume_at[name] = now + self.plan.pause_s
        else:
            member.kill()
            self._restart_at[name] = now + self.rng.uniform(0.0, RESTART_DELAY_MAX_S)
        self._record(kind, name, now)

    def _record(self, kind: FaultKind, name: str, now: float) -> None:
        self.records.append(FaultRecord(round(now - self.started, 3), kind, name))
        log.debug("%s %s", kind, name)


def _signal(member: AgentProcess, signum: signal.Signals) -> None:
    if member.proc is not None and member.proc.poll() is None:
        os.kill(member.proc.pid, signum)
