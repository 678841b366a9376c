"""A goal's typed state, as the planner's decider sees it: the goal, every task of every plan
version (actions and compensations), each task's current attempt, the open escalations and the
budget used. Frozen: a decision returns a new state, never changes the old one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agents.enums import (
    CompensationPolicy,
    GoalStatus,
    Outcome,
    TaskKind,
    TaskStatus,
)
from agents.planner._rows import evolve

__all__ = [
    "Attempt",
    "Effect",
    "Ending",
    "Goal",
    "GoalState",
    "Task",
    "evolve",
    "results_by_step",
    "with_effect",
    "without_attempt",
]


@dataclass(frozen=True)
class Attempt:
    """One attempt of a task: what it ran with and how it ended (``outcome`` None: in flight)."""

    number: int
    key: str
    fence: int
    arguments: Mapping[str, Any]
    outcome: Outcome | None = None
    category: str | None = None
    message: str | None = None
    result: Mapping[str, Any] | None = None  # the tool's result, or a failure's details
    feedback: str | None = None


@dataclass(frozen=True)
class Effect:
    """What a step may have done under one idempotency key: the arguments its attempts ran with
    under that key, the attempts that may have acted (succeeded, or unknown), and what the last
    of them reported (a result, or a partial failure's details), from which its compensation
    takes the ids of what to undo."""

    key: str
    arguments: Mapping[str, Any]
    attempts: tuple[int, ...]
    result: Mapping[str, Any] | None = None


def with_effect(effects: tuple[Effect, ...], attempt: Attempt) -> tuple[Effect, ...]:
    """``effects`` once ``attempt`` may have acted (it succeeded, its outcome is unknown, or it
    was still running when superseded)."""
    for i, known in enumerate(effects):
        if known.key == attempt.key:
            attempts = tuple(sorted({*known.attempts, attempt.number}))
            result = attempt.result if attempt.result is not None else known.result
            updated = Effect(known.key, known.arguments, attempts, result)
            return (*effects[:i], updated, *effects[i + 1 :])
    return (*effects, Effect(attempt.key, attempt.arguments, (attempt.number,), attempt.result))


def without_attempt(effects: tuple[Effect, ...], attempt: Attempt) -> tuple[Effect, ...]:
    """``effects`` once ``attempt``, counted as maybe-done, reported that it did nothing."""
    kept = []
    for known in effects:
        left = known.attempts
        if known.key == attempt.key:
            left = tuple(n for n in left if n != attempt.number)
        if left:
            kept.append(Effect(known.key, known.arguments, left, known.result))
    return tuple(kept)


@dataclass(frozen=True)
class Task:
    """A plan step (or a compensation) and its current attempt.

    ``effects`` are what its attempts may have done, one per idempotency key (an attempt
    succeeded, or its outcome is unknown): what a rollback undoes. ``floor`` is the attempt count
    the tool's retry budget counts from (raised by a human's answer and by attempts lost to the
    infrastructure, which have their own budget, ``infra_losses``). ``generation`` changes the
    idempotency key when the call changes (a semantic retry, a human's ``set``)."""

    task_id: str
    goal_id: str
    plan_version: int
    step_id: str
    tool: str
    arguments: Mapping[str, Any]
    depends_on: tuple[str, ...]
    pool: str
    kind: TaskKind = TaskKind.ACTION
    status: TaskStatus = TaskStatus.PENDING
    attempt: int = 0
    floor: int = 0
    infra_losses: int = 0
    generation: int = 0
    key: str = ""
    effects: tuple[Effect, ...] = ()
    result: Mapping[str, Any] | None = None
    compensates: str | None = None  # for a compensation: the task it undoes
    undoes: str | None = None  # for a compensation: the effect's idempotency key
    current: Attempt | None = None

    @property
    def action(self) -> bool:
        return self.kind is TaskKind.ACTION

    @property
    def in_flight(self) -> bool:
        return self.status in (TaskStatus.DISPATCHED, TaskStatus.EVALUATING)


@dataclass(frozen=True)
class Ending:
    """Why a goal is ending, kept while its rollback runs: what it reports when done."""

    status: GoalStatus
    category: str
    message: str
    failed_step: str | None = None


@dataclass(frozen=True)
class Goal:
    """A goal's settings, budget use and progress."""

    goal_id: str
    status: GoalStatus
    max_steps: int
    submitted_at: datetime
    max_tokens: int | None = None
    budget_usd: float | None = None
    deadline_at: datetime | None = None
    confidence_threshold: float = 0.0
    max_replans: int = 2
    compensation_policy: CompensationPolicy = CompensationPolicy.ALL
    plan_version: int = 0
    steps_used: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    replans: int = 0
    ending: Ending | None = None
    failures: Mapping[str, int] = field(default_factory=dict)  # "category: message" -> times
    since_accept: int = 0  # verdicts since the last accept
    escalations: Mapping[str, str] = field(default_factory=dict)  # open: id -> task id
    trace_parent: str | None = None
    summary: str | None = None
    output: Mapping[str, Any] | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def live(self) -> bool:
        return self.status.live


@dataclass(frozen=True)
class GoalState:
    """A goal and all its tasks, by task id."""

    goal: Goal
    tasks: Mapping[str, Task] = field(default_factory=dict)

    def task(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def current(self, kind: TaskKind = TaskKind.ACTION) -> list[Task]:
        """The current plan version's tasks of ``kind`` (compensations: all), in task order."""
        version = self.goal.plan_version
        return sorted(
            (
                t
                for t in self.tasks.values()
                if t.kind is kind and (kind is TaskKind.COMPENSATION or t.plan_version == version)
            ),
            key=lambda t: t.task_id,
        )

    def with_goal(self, goal: Goal) -> GoalState:
        return GoalState(goal, self.tasks)

    def with_task(self, task: Task) -> GoalState:
        return GoalState(self.goal, {**self.tasks, task.task_id: task})


def results_by_step(tasks: Iterable[Task]) -> dict[str, dict[str, Any]]:
    """The results of the succeeded steps among ``tasks``, by step id."""
    return {
        t.step_id: dict(t.result)
        for t in tasks
        if t.status is TaskStatus.SUCCEEDED and t.result is not None
    }
