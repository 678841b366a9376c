"""The planner agent: the thin shell around the decider (``agents.planner.decide``).

Consumes: ``goals`` (GoalSubmitted, GoalCancelled), ``results`` (TaskCompleted, TaskFailed,
TaskEvaluated) and ``escalations`` (EscalationResolved); fires its own durable timers. Emits,
through the ledger's outbox: TaskAssigned on ``tasks``, GoalCompleted and GoalFailed on
``results``, EscalationRaised on ``escalations``. Run it with ``mesh run planner``; any number may
run.

For each batch of events the shell loads the states of the goals the batch is about, in one
round trip and locked (``repository.load``); feeds each event to ``decide``; carries out what it
commands (asks the engine for a plan and feeds the answer back, raises a goal's cancel flag,
publishes events through the outbox); and writes the batch's changes in bulk before the commit
(``repository.write``). Every policy is the decider's; nothing here decides.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from agents import events as ev
from agents.engines.base import Engine, EngineError, PlanDraft, PlanRequest
from agents.enums import TimerKind
from agents.ledger.db import Connection, remember
from agents.ledger.outbox import LedgerHandler
from agents.planner import repository
from agents.planner.changes import (
    AskForPlan,
    Change,
    Command,
    Decided,
    GoalPut,
    Input,
    PlanReady,
    PlanRefused,
    Publish,
    RaiseCancelFlag,
    Refused,
    TimerFired,
)
from agents.planner.decide import Context, Rules, decide
from agents.planner.plan import validate_plan
from agents.planner.repository import Versioned
from agents.planner.retry import Limits
from agents.planner.state import GoalState
from agents.runtime.consumer import Delivery, Item, process_span
from agents.runtime.telemetry import Headers, inject, tracer
from agents.tools.base import Registry

log = logging.getLogger(__name__)
__all__ = ["Limits", "Planner"]


KEPT_GOALS = 4096
"""Goals whose states a planner keeps between its batches, at most (the least recent go)."""


@dataclass
class _Batch:
    """What the shell holds for one ledger transaction: the goals' states as decided so far
    and the versions they were loaded at, the changes to write, and the text and input of goals
    taken in (not in the ledger yet)."""

    conn: Connection
    states: dict[str, GoalState]
    versions: dict[str, int] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    texts: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def load(
        cls, conn: Connection, goal_ids: Sequence[str], known: Mapping[str, Versioned]
    ) -> _Batch:
        loaded = repository.load(conn, goal_ids, known)
        states = {g: state for g, (_, state) in loaded.items()}
        return cls(conn, states, {g: version for g, (version, _) in loaded.items()})

    def kept(self) -> dict[str, Versioned]:
        """After its changes are written: each goal's state at the version the ledger now has
        (one more for a goal written, 0 for a goal taken in)."""
        written = {c.goal.goal_id for c in self.changes if isinstance(c, GoalPut)}
        kept: dict[str, Versioned] = {}
        for goal_id, state in self.states.items():
            loaded = self.versions.get(goal_id, -1)  # -1: taken in by this batch
            kept[goal_id] = (loaded + 1 if goal_id in written else loaded, state)
        return kept


class Planner:
    """Feeds events to the decider and carries out its decisions."""

    def __init__(
        self,
        *,
        engine: Engine,
        registry: Registry,
        limits: Limits | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        draw: Callable[[], float] = random.random,
        on_cancel: Callable[[str], None] | None = None,
        mesh: str = "",
    ) -> None:
        self.mesh = mesh  # the topic prefix: goals taken in here are this mesh's
        self.rules = Rules(registry, limits or Limits())
        self._engine = engine
        self._registry = registry
        self._clock = clock
        self._draw = draw
        self._on_cancel = on_cancel
        self._batch: _Batch | None = None
        # The states this planner's committed batches left, by goal: reused while the goal's
        # version is the one they were left at (every write of a goal's state adds one).
        self._known: dict[str, Versioned] = {}
        self._timers_seen: tuple[float, bool] | None = None  # (when a batch asked, the answer)

    # -- one batch at a time ---------------------------------------------------------------------

    def before_batch(self, conn: Connection, events: Sequence[ev.Event]) -> None:
        """Lock and read every goal the batch is about, at once; ask, in the same round trip,
        whether a timer is due (``timers_may_be_due``)."""
        due = conn.execute(repository.ANY_DUE, (self.mesh,))
        self._batch = _Batch.load(conn, [e.goal_id for e in events], self._known)
        row = due.fetchone()
        self._timers_seen = (time.monotonic(), bool(row and row[0]))

    def after_batch(self, completed: bool) -> None:
        """Write the batch's changes (still in its transaction) and keep its goals' states; or
        (it failed, perhaps in its commit after a call with True) forget them."""
        batch, self._batch = self._batch, None
        if not completed:
            self._known.clear()
            return
        if batch is None:
            return
        if batch.changes:
            repository.write(batch.conn, batch.changes, mesh=self.mesh)
        for goal_id, kept in batch.kept().items():
            self._known.pop(goal_id, None)
            if kept[1].goal.live:
                remember(self._known, goal_id, kept, most=KEPT_GOALS)

    def timers_may_be_due(self, *, since: float) -> bool:
        """False only when a batch begun after ``since`` (``time.monotonic``) found no timer
        due."""
        seen = self._timers_seen
        return seen is None or seen[0] < since or seen[1]

    def handlers(self) -> dict[type[ev.Event], LedgerHandler]:
        return {
            ev.GoalSubmitted: self.on_submitted,
            ev.GoalCancelled: self.on_event,
            ev.TaskCompleted: self.on_event,
            ev.TaskFailed: self.on_event,
            ev.TaskEvaluated: self.on_event,
            ev.EscalationResolved: self.on_event,
        }

    def span_name(self, item: Item) -> str | None:
        """A worker's outcome is recorded without a span of the planner's: it decides and sends
        nothing (the verdict on it does), and the evaluator's span of the same record places it
        in the goal's trace. Every other event is handled in its ``process <topic>`` span."""
        if isinstance(item.event, ev.TaskCompleted | ev.TaskFailed):
            return None
        return process_span(item)

    # -- events ----------------------------------------------------------------------------------

    def on_submitted(
        self, event: ev.GoalSubmitted, delivery: Delivery, conn: Connection
    ) -> list[ev.Event]:
        return self.handle(conn, event, trace_parent=_goal_traceparent(delivery))

    def on_event(self, event: ev.Event, delivery: Delivery, conn: Connection) -> list[ev.Event]:
        return self.handle(conn, event)  # type: ignore[arg-type]

    def on_refused(
        self, event: ev.Event, category: str, reason: str, conn: Connection
    ) -> list[ev.Event]:
        """An event this planner could not handle ends its goal as failed, never stuck (a goal
        submitted so is stored, and ends at once)."""
        refused = Refused(event.goal_id, category, reason, event.event_id)
        first: list[Input] = [event] if isinstance(event, ev.GoalSubmitted) else []
        return self.handle_all(conn, [*first, refused], planning=False)

    def on_timer(self, conn: Connection, timer: dict[str, Any]) -> list[ev.Event]:
        """A durable timer came due."""
        fired = TimerFired(
            goal_id=timer["goal_id"],
            kind=TimerKind(timer["kind"]),
            task_id=timer["task_id"],
            escalation_id=timer["escalation_id"],
            payload=timer["payload"] or {},
        )
        return self.handle(conn, fired)

    def on_timer_error(self, conn: Connection, goal_id: str, reason: str) -> list[ev.Event]:
        """A timer this planner could not handle ends its goal, rather than leaving it waiting."""
        return self.handle_all(conn, [Refused(goal_id, "timer_error", reason)], planning=False)

    def handle(
        self, conn: Connection, event: Input, *, trace_parent: str | None = None
    ) -> list[ev.Event]:
        return self.handle_all(conn, [event], trace_parent=trace_parent)

    def handle_all(
        self,
        conn: Connection,
        inputs: Sequence[Input],
        *,
        trace_parent: str | None = None,
        planning: bool = True,
    ) -> list[ev.Event]:
        """Decide ``inputs`` (about one goal) in turn and carry the decisions out; within a
        batch the changes are written with it, outside one (a record handled on its own, a
        timer) at once."""
        batch = self._batch
        own = batch is None
        if batch is None:
            goal_id = inputs[0].goal_id
            batch = _Batch.load(conn, [goal_id], {})
        out: list[ev.Event] = []
        for event in inputs:
            out += self._run(batch, event, trace_parent, planning)
        if own and batch.changes:
            repository.write(conn, batch.changes, mesh=self.mesh)
        return out

    def _run(
        self, batch: _Batch, event: Input, trace_parent: str | None, planning: bool
    ) -> list[ev.Event]:
        """Decide one input, and the engine's answers to what the decision asked."""
        pending: list[Input] = [event]
        out: list[ev.Event] = []
        while pending:
            decided = self._decide(batch, pending.pop(0), trace_parent)
            for command in decided.commands:
                answer = self._carry_out(batch, command, planning)
                if isinstance(answer, ev.Event):
                    out.append(answer)
                elif answer is not None:
                    pending.append(answer)
        return out

    def _decide(self, batch: _Batch, event: Input, trace_parent: str | None) -> Decided:
        goal_id = event.goal_id
        if isinstance(event, ev.GoalSubmitted):
            batch.texts.setdefault(goal_id, (event.text, dict(event.input)))
        decided = decide(batch.states.get(goal_id), event, self._context())
        if decided.state is not None:
            batch.states[goal_id] = decided.state
        batch.changes += [_traced(c, trace_parent) for c in decided.changes]
        return decided

    def _carry_out(
        self, batch: _Batch, command: Command, planning: bool
    ) -> ev.Event | PlanReady | PlanRefused | Refused | None:
        """Carry out one command: an event to send, or the answer for the decider, if any."""
        if isinstance(command, Publish):
            return command.event
        if isinstance(command, RaiseCancelFlag):
            if self._on_cancel is not None:
                self._on_cancel(command.goal_id)
            return None
        if planning:
            return self._plan(batch, command)
        return Refused(command.goal_id, "not_planned", "the goal was refused before its plan")

    def _context(self) -> Context:
        return Context(self.rules, self._clock(), self._draw())

    # -- planning --------------------------------------------------------------------------------

    def _plan(self, batch: _Batch, command: AskForPlan) -> PlanReady | PlanRefused:
        """Ask the engine for a plan; its answer, for the decider."""
        state = batch.states[command.goal_id]
        text, given = batch.texts.get(command.goal_id) or repository.goal_texts(
            batch.conn, command.goal_id
        )
        max_steps = state.goal.max_steps

        def validate(draft: PlanDraft) -> None:
            validate_plan(draft, self._registry, max_steps, most=self.rules.limits.plan_steps)

        request = PlanRequest(
            goal_id=command.goal_id,
            text=text,
            input=given,
            tools=self._registry.specs(),
            max_steps=max_steps,
            validate=validate,
            context=command.context,
            deadline=state.goal.deadline_at,
        )
        try:
            with tracer.start_as_current_span("plan") as span:
                span.set_attributes(
                    {"mesh.goal_id": command.goal_id, "mesh.engine": self._engine.name}
                )
                planned = self._engine.plan(request)
        except EngineError as exc:
            return PlanRefused(
                command.goal_id,
                exc.category,
                str(exc),
                exc.usage,
                command.cause_id,
                replaces=command.replaces,
            )
        return PlanReady(
            command.goal_id,
            planned.draft,
            planned.engine,
            planned.usage,
            command.cause_id,
            reason=command.context,
            replaces=command.replaces,
        )


def _traced(change: Change, trace_parent: str | None) -> Change:
    """A new goal's row carries its trace, so what its timers send joins it."""
    if trace_parent and isinstance(change, GoalPut) and change.new:
        return replace(change, trace_parent=trace_parent)
    return change


def _goal_traceparent(delivery: Delivery) -> str | None:
    """The goal's trace, kept so that what its timers send joins it: the submitter's span, or,
    when the submission came without one, the span this planner handles it in (the root)."""
    here: Headers = []
    inject(here)
    for key, value in (*delivery.headers, *here):  # the record's own first
        if key == "traceparent" and isinstance(value, bytes):
            return value.decode("latin-1")
    return None
