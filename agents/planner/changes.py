"""What goes into the decider besides the contract's events, and what comes out of it.

Inputs: the contract's events (``agents.events``), plus the planner's own: a plan the engine
made (``PlanReady``) or could not make (``PlanRefused``), a durable timer that came due
(``TimerFired``), and an event the shell could not handle (``Refused``).

Outputs: *changes*, the ledger transitions to write (each the new value of a row, or a row to
add), and *commands*, what the shell does besides: events to publish, an engine to ask for a
plan, a goal's cancel flag to raise. Timers are changes: they are ledger rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agents import events as ev
from agents.engines.base import PlanDraft
from agents.enums import TimerKind
from agents.planner.state import Attempt, Goal, Task

# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanReady:
    """The engine's plan for a goal, validated against the catalogue."""

    goal_id: str
    draft: PlanDraft
    engine: str
    usage: ev.Usage
    cause_id: str
    reason: str = ""  # why this plan replaces the last one ("" for a goal's first plan)
    replaces: int = 0  # the plan version it was asked to replace (0: none yet)


@dataclass(frozen=True)
class PlanRefused:
    """The engine could not plan the goal (or a budget forbade asking it)."""

    goal_id: str
    category: str
    message: str
    usage: ev.Usage
    cause_id: str
    replaces: int = 0


@dataclass(frozen=True)
class TimerFired:
    """A durable timer came due."""

    goal_id: str
    kind: TimerKind
    task_id: str | None = None
    escalation_id: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    """The shell could not handle an event of this goal: the goal must end, not hang."""

    goal_id: str
    category: str
    reason: str
    cause_id: str | None = None


Input = (
    ev.GoalSubmitted
    | ev.GoalCancelled
    | ev.TaskCompleted
    | ev.TaskFailed
    | ev.TaskEvaluated
    | ev.EscalationResolved
    | PlanReady
    | PlanRefused
    | TimerFired
    | Refused
)

# -- changes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoalPut:
    """The goal's row as it is now (``new``: not in the ledger yet)."""

    goal: Goal
    new: bool = False
    text: str = ""  # a new goal's text and input, stored once
    input: Mapping[str, Any] = field(default_factory=dict)
    submitted_by: str = ""
    trace_parent: str | None = None  # the goal's trace (the shell's to know)


@dataclass(frozen=True)
class TaskPut:
    """A task's row as it is now (``new``: not in the ledger yet)."""

    task: Task
    new: bool = False


@dataclass(frozen=True)
class AttemptPut:
    """An attempt's row as it is now (``new``: just dispatched)."""

    task_id: str
    attempt: Attempt
    new: bool = False
    worker_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    usage: ev.Usage = field(default_factory=ev.Usage)


@dataclass(frozen=True)
class PlanAdded:
    """A plan version, as the engine proposed it."""

    goal_id: str
    version: int
    engine: str
    rationale: str
    steps: list[dict[str, Any]]
    reason: str


@dataclass(frozen=True)
class VerdictAdded:
    verdict: ev.TaskEvaluated


@dataclass(frozen=True)
class EscalationOpened:
    raised: ev.EscalationRaised


@dataclass(frozen=True)
class EscalationClosed:
    escalation_id: str
    status: str  # resolved | expired
    action: str
    values: Mapping[str, Any]
    by: str


@dataclass(frozen=True)
class TimerSet:
    goal_id: str
    kind: TimerKind
    due_at: datetime
    task_id: str | None = None
    escalation_id: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Charged:
    """A line of the goal's usage log (its totals are in the goal's row)."""

    goal_id: str
    source: str
    usage: ev.Usage


Change = (
    GoalPut
    | TaskPut
    | AttemptPut
    | PlanAdded
    | VerdictAdded
    | EscalationOpened
    | EscalationClosed
    | TimerSet
    | Charged
)

# -- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Publish:
    event: ev.Event


@dataclass(frozen=True)
class AskForPlan:
    """Ask the engine for a plan (``context``: why the last one failed, for a re-plan); the
    answer comes back as ``PlanReady`` or ``PlanRefused``."""

    goal_id: str
    cause_id: str
    context: str = ""
    replaces: int = 0  # the plan version the answer replaces: an answer to a stale ask is moot


@dataclass(frozen=True)
class RaiseCancelFlag:
    """Tell running tools of the goal to stop, where they listen."""

    goal_id: str


Command = Publish | AskForPlan | RaiseCancelFlag


@dataclass(frozen=True)
class Decided:
    """A decision: the goal's new state (None: the input was not about a goal the planner
    holds), the changes to write and the commands to carry out, in order."""

    state: Any
    changes: tuple[Change, ...] = ()
    commands: tuple[Command, ...] = ()

    @property
    def events(self) -> list[ev.Event]:
        return [c.event for c in self.commands if isinstance(c, Publish)]
