"""The invariants, judged from what a run observed: pure functions of the observations, so the
rules are tested on made-up cases with no services."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from chaos._scenarios import TENANT_COMPONENTS, Effect, End, Scenario

TERMINAL = frozenset(e.value for e in End)
COMPLETION_TARGET = 0.99  # the share of goals meant to complete that must complete


class Violation(StrEnum):
    """A kind of broken promise, counted once per goal it affects."""

    STUCK = "stuck"
    """The goal had not ended when the run's timeout passed."""
    APPLIED_TWICE = "applied twice"
    """An effect exists live more than once, or twice under one idempotency key."""
    LEFT_BEHIND = "left behind"
    """A live effect the goal's end does not account for (a rolled-back goal, or one its plan
    never asked for)."""
    MISSING_EFFECTS = "missing effects"
    """A completed goal lacks an effect its plan implies."""
    DISAGREEMENT = "ledger/log disagreements"
    """The ledger's final status and the results topic's terminal events differ."""
    WRONG_END = "wrong ends"
    """A goal meant to fail or be cancelled ended otherwise."""


@dataclass(frozen=True)
class EffectRows:
    """One kind of effect of one goal: its rows, the live ones, and the most under one key."""

    rows: int = 0
    live: int = 0
    most_per_key: int = 0


@dataclass(frozen=True)
class Observed:
    """What the run saw of one goal once it was over."""

    goal_id: str
    scenario: Scenario
    slug: str
    status: str  # the ledger's; "submitted" when the planner never took it in
    ended_in_time: bool
    compensation_policy: str = "all"
    rows: Mapping[Effect, EffectRows] = field(default_factory=dict)  # the four table kinds
    tenant_components: int = 0
    log_ends: tuple[str, ...] = ()  # terminal events on the results topic, one per event id

    def live(self) -> frozenset[Effect]:
        found = {kind for kind, r in self.rows.items() if r.live}
        if self.tenant_components:
            found.add(Effect.TENANT)
        return frozenset(found)


def judge(goal: Observed) -> tuple[Violation, ...]:
    """Every invariant the goal breaks."""
    found = [
        Violation.STUCK if not goal.ended_in_time else None,
        Violation.APPLIED_TWICE if _applied_twice(goal) else None,
        Violation.LEFT_BEHIND if _left_behind(goal) else None,
        Violation.MISSING_EFFECTS if _missing(goal) else None,
        Violation.DISAGREEMENT if _disagrees(goal) else None,
        Violation.WRONG_END if _wrong_end(goal) else None,
    ]
    return tuple(v for v in found if v is not None)


def _applied_twice(goal: Observed) -> bool:
    return any(r.live > 1 or r.most_per_key > 1 for r in goal.rows.values())


def _left_behind(goal: Observed) -> bool:
    if goal.status == End.COMPLETED:
        return bool(goal.live() - goal.scenario.effects)
    rolled_back = goal.status in (End.FAILED, End.CANCELLED)
    return rolled_back and goal.compensation_policy != "none" and bool(goal.live())


def _missing(goal: Observed) -> bool:
    if goal.status != End.COMPLETED:
        return False
    for kind in goal.scenario.effects:
        if kind is Effect.TENANT:
            if goal.tenant_components != TENANT_COMPONENTS:
                return True
        elif goal.rows.get(kind, EffectRows()).live != 1:
            return True
    return False


def _disagrees(goal: Observed) -> bool:
    """A terminal goal has exactly one terminal event, saying the same; a live one has none."""
    if goal.status in TERMINAL:
        return goal.log_ends != (goal.status,)
    return bool(goal.log_ends)


def _wrong_end(goal: Observed) -> bool:
    """Goals meant to complete are judged by the completion share instead."""
    expect = goal.scenario.expect
    return expect != End.COMPLETED and goal.status in TERMINAL and goal.status != expect


@dataclass(frozen=True)
class Tally:
    """What the harness did and met besides the goals' own outcomes."""

    kills: int = 0
    pauses: int = 0
    crashes: int = 0  # agents that exited without being killed
    answered: int = 0  # escalations answered as their scenario says
    unexpected_escalations: int = 0
    cancels: int = 0
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class GoalVerdict:
    goal_id: str
    scenario: str
    slug: str
    expect: str
    status: str
    violations: tuple[str, ...]
    live: tuple[str, ...]
    log_ends: tuple[str, ...]


@dataclass(frozen=True)
class ChaosReport:
    """The run's counts, its verdict, and every goal's."""

    goals: int
    should_complete: int
    completed: int
    violations: Mapping[Violation, int]
    tally: Tally
    details: tuple[GoalVerdict, ...] = ()
    seed: int | None = None

    @property
    def completion_share(self) -> float:
        return self.completed / self.should_complete if self.should_complete else 1.0

    @property
    def ok(self) -> bool:
        return not any(self.violations.values()) and self.completion_share >= COMPLETION_TARGET

    def line(self) -> str:
        """The one summary line."""
        counts = ", ".join(f"{self.violations.get(v, 0)} {v}" for v in Violation)
        return (
            f"chaos: {self.goals} goals ({self.should_complete} should complete: "
            f"{self.completed} did), {self.tally.kills} kills, {self.tally.pauses} pauses, "
            f"{self.tally.crashes} crashes, "
            f"{counts}, {self.tally.unexpected_escalations} unexpected escalations -> "
            f"{'OK' if self.ok else 'FAILED'}"
        )

    def summary(self) -> dict[str, Any]:
        """The counts as JSON, without the goals."""
        return {
            "ok": self.ok,
            "seed": self.seed,
            "goals": self.goals,
            "should_complete": self.should_complete,
            "completed": self.completed,
            "completion_share": round(self.completion_share, 4),
            "completion_target": COMPLETION_TARGET,
            "violations": {str(v): self.violations.get(v, 0) for v in Violation},
            **asdict(self.tally),
        }

    def as_json(self) -> dict[str, Any]:
        """The summary and every goal's verdict."""
        return self.summary() | {"details": [asdict(d) for d in self.details]}


def summarise(observed: Sequence[Observed], tally: Tally, seed: int | None = None) -> ChaosReport:
    judged = [(goal, judge(goal)) for goal in observed]
    counts = Counter(v for _, found in judged for v in found)
    meant = [g for g in observed if g.scenario.expect == End.COMPLETED]
    return ChaosReport(
        goals=len(observed),
        should_complete=len(meant),
        completed=sum(g.status == End.COMPLETED for g in meant),
        violations={v: counts.get(v, 0) for v in Violation},
        tally=tally,
        details=tuple(_verdict(goal, found) for goal, found in judged),
        seed=seed,
    )


def _verdict(goal: Observed, found: tuple[Violation, ...]) -> GoalVerdict:
    return GoalVerdict(
        goal_id=goal.goal_id,
        scenario=goal.scenario.name,
        slug=goal.slug,
        expect=goal.scenario.expect,
        status=goal.status,
        violations=tuple(str(v) for v in found),
        live=tuple(sorted(str(e) for e in goal.live())),
        log_ends=goal.log_ends,
    )
