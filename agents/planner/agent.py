"""The planner agent.

Consumes: ``goals`` (GoalSubmitted, GoalCancelled), ``results`` (TaskCompleted, TaskFailed,
TaskEvaluated) and ``escalations`` (EscalationResolved); fires its own durable timers. Emits,
through the ledger's outbox: TaskAssigned on ``tasks``, GoalCompleted and GoalFailed on
``results``, EscalationRaised on ``escalations``. Run it with ``mesh run planner``; any number may
run.

For each goal it asks the reasoning engine for a plan, validates it against the tool catalogue,
stores it as a plan version, and dispatches every task whose dependencies are done, all at once.
The evaluator's verdicts drive the rest, and the runtime enforces every policy:

- accept: dispatch what became ready, or complete the goal;
- retry: schedule the next attempt on a durable timer, after exponential backoff with jitter;
  when the attempts run out, escalate to a human (or fail, per the tool's policy); the same
  failure again and again, or no progress for long, ends the goal early;
- escalate: the goal waits for a human (``mesh resolve``), or for the escalation's expiry;
- replan: ask the engine for a new plan version that keeps the completed steps (bounded);
- fail: end the goal, compensating completed steps in reverse dependency order (saga).

Budgets (steps, tokens, cost, deadline) are checked before every dispatch and engine call.
Every change is a compare-and-set in the ledger, made in the same transaction as the events that
announce it.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agents import events as ev
from agents.engines.base import Engine, EngineError, PlanDraft, Planned, PlanRequest
from agents.ledger.db import Connection
from agents.ledger.outbox import LedgerHandler
from agents.planner import decide, saga
from agents.planner import ledger as L  # noqa: N812 - the ledger queries read best qualified
from agents.planner.decide import GoalRow, TaskRow
from agents.planner.plan import resolve_arguments, validate_plan
from agents.planner.snapshot import Kept, Snapshot
from agents.runtime.consumer import Delivery, Item, process_span
from agents.runtime.telemetry import Headers, inject, tracer
from agents.tools.base import HUMAN_RETRY, Registry

AGENT = "planner"
LIVE = ("planning", "running", "waiting_human", "compensating")
ESCALATION_OPTIONS = ["approve", "retry", "abort", "set"]


@dataclass(frozen=True)
class Limits:
    """Early-termination and escalation settings of the planner."""

    same_failure: int = 10  # the same (category, message) this often ends the goal
    no_progress: int = 20  # this many verdicts in a row without an accept end the goal
    escalation_ttl_s: float = 3600.0
    escalation_default: str = "abort"


@dataclass(frozen=True)
class Unplanned:
    """Why a goal got no plan: a budget already spent, or the engine's error (and what the
    engine spent on it)."""

    category: str
    message: str
    usage: ev.Usage = field(default_factory=ev.Usage)


class Planner:
    """The planner's decisions, one method per event type (and one for timers)."""

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
        self._engine = engine
        self._registry = registry
        self._limits = limits or Limits()
        self._clock = clock
        self._draw = draw
        self._on_cancel = on_cancel
        self._pools = {t.name: t.pool for t in registry}
        self._snapshot: Snapshot | None = None
        self._kept = Kept()  # goals' plans as the last batches left them
        self._timers_seen: tuple[float, bool] | None = None  # (when a batch asked, the answer)

    # -- one batch at a time -----------------------------------------------------------------

    def before_batch(self, conn: Connection, events: Sequence[ev.Event]) -> None:
        """Lock and read every goal the batch is about, at once (see ``snapshot``); that also
        tells which submitted goals are new. The same round trip says whether any timer is due,
        so a busy planner need not ask again between batches (``timers_may_be_due``)."""
        due = L.any_timer_due(conn, self.mesh)
        self._snapshot = Snapshot.load(conn, [e.goal_id for e in events], self._kept)
        row = due.fetchone()
        self._timers_seen = (time.monotonic(), bool(row and row[0]))

    def timers_may_be_due(self, *, since: float) -> bool:
        """False only when a batch begun after ``since`` (``time.monotonic``) found no timer
        due."""
        seen = self._timers_seen
        return seen is None or seen[0] < since or seen[1]

    def after_batch(self, completed: bool) -> None:
        """Write what the batch held back (``completed``), or forget it (the batch failed,
        perhaps in its commit after all, which may come after a call with True): the kept plans
        too, since the batch's snapshot changed them in place."""
        snapshot, self._snapshot = self._snapshot, None
        if not completed:
            self._kept.forget()
        elif snapshot is not None:
            snapshot.flush()
            snapshot.keep(self._kept)

    def _goal(self, conn: Connection, goal_id: str) -> GoalRow | None:
        """The goal, locked: from the batch's snapshot while it holds the goal."""
        snapshot = self._held(goal_id)
        return snapshot.goal(goal_id) if snapshot is not None else L.lock_goal(conn, goal_id)

    def _tasks(self, conn: Connection, goal: GoalRow, kind: str = "action") -> list[TaskRow]:
        snapshot = self._held(goal.goal_id)
        if snapshot is not None:
            return snapshot.tasks(goal.goal_id, kind)
        return L.tasks_of(conn, goal.goal_id, goal.plan_version, kind=kind)

    def _totals(self, conn: Connection, goal: GoalRow) -> tuple[ev.Usage, int, float]:
        """The goal's usage, steps used and seconds since submission."""
        if self._held(goal.goal_id) is None:
            return L.usage_of(conn, goal.goal_id)
        usage = ev.Usage(
            input_tokens=goal.input_tokens, output_tokens=goal.output_tokens, cost_usd=goal.cost_usd
        )
        return usage, goal.steps_used, (self._clock() - goal.submitted_at).total_seconds()

    def _held(self, goal_id: str) -> Snapshot | None:
        snapshot = self._snapshot
        return snapshot if snapshot is not None and snapshot.holds(goal_id) else None

    def _held_task(self, goal_id: str, task_id: str) -> tuple[Snapshot, TaskRow] | None:
        snapshot = self._held(goal_id)
        task = snapshot.task(goal_id, task_id) if snapshot is not None else None
        return (snapshot, task) if snapshot is not None and task is not None else None

    def _release(self, goal_id: str) -> None:
        """What follows changes the goal in ways the snapshot does not follow."""
        if self._snapshot is not None:
            self._snapshot.release(goal_id)

    def handlers(self) -> dict[type[ev.Event], LedgerHandler]:
        return {
            ev.GoalSubmitted: self.on_submitted,
            ev.GoalCancelled: self.on_cancelled,
            ev.TaskCompleted: self.on_outcome,
            ev.TaskFailed: self.on_outcome,
            ev.TaskEvaluated: self.on_verdict,
            ev.EscalationResolved: self.on_resolved,
        }

    def span_name(self, item: Item) -> str | None:
        """A worker's outcome is recorded without a span of the planner's: it decides and sends
        nothing (the verdict on it does), and the evaluator's span of the same record places it
        in the goal's trace. Every other event is handled in its ``process <topic>`` span."""
        if isinstance(item.event, ev.TaskCompleted | ev.TaskFailed):
            return None
        return process_span(item)

    # -- goals -------------------------------------------------------------------------------

    def on_submitted(
        self, event: ev.GoalSubmitted, delivery: Delivery, conn: Connection
    ) -> list[ev.Event]:
        snapshot = self._snapshot
        trace_parent = _goal_traceparent(delivery)
        if snapshot is not None and snapshot.is_new(event.goal_id):
            return self._take_in(conn, snapshot, event, trace_parent)
        if snapshot is not None and snapshot.holds(event.goal_id):
            return []  # submitted again (perhaps earlier in this batch): already in hand
        if not L.insert_goal(conn, event, trace_parent, self.mesh):
            return []  # the same goal submitted again: it is already in hand
        goal = _locked(conn, event.goal_id)
        planned = self._plan(conn, goal, event.event_id)
        if not isinstance(planned, Planned):
            return planned
        L.insert_plan(conn, goal, planned, self._pools)
        return self._advance(conn, goal.goal_id, event.event_id)

    def _take_in(
        self,
        conn: Connection,
        snapshot: Snapshot,
        event: ev.GoalSubmitted,
        trace_parent: str | None,
    ) -> list[ev.Event]:
        """A goal the ledger has not seen: planned first and then stored with its plan by the
        batch's snapshot, with the batch's other new goals (what follows reads no row back). A
        goal that cannot be planned is stored at once and ended."""
        goal = L.goal_row(event)
        proposal = self._propose(goal)
        if not isinstance(proposal, Planned):
            L.insert_goal(conn, event, trace_parent, self.mesh, known_new=True)
            return self._refuse(conn, goal, event.event_id, proposal)
        tasks = L.new_tasks(goal.goal_id, L.FIRST_PLAN, proposal, self._pools)
        intake = L.Intake(event, trace_parent, self.mesh, self._kept.owner, proposal, tasks)
        snapshot.take_in(intake, _planned(goal))  # its batch keeps its plan (``Kept``)
        self._charge(conn, goal.goal_id, "plan", proposal.usage)
        return self._advance(conn, goal.goal_id, event.event_id)

    def _plan(
        self, conn: Connection, goal: GoalRow, cause_id: str, context: str = ""
    ) -> Planned | list[ev.Event]:
        """Ask the engine for a plan, budgets permitting, and charge the goal for it; the
        failure events otherwise."""
        proposal = self._propose(goal, context)
        if not isinstance(proposal, Planned):
            return self._refuse(conn, goal, cause_id, proposal)
        L.add_usage(conn, goal.goal_id, "plan", proposal.usage)
        return proposal

    def _propose(self, goal: GoalRow, context: str = "") -> Planned | Unplanned:
        """The engine's plan, budgets permitting; why there is none otherwise."""
        problem = decide.budget_problem(goal, self._clock(), counting_steps=False)
        if problem is not None:
            return Unplanned(*problem)
        try:
            with tracer.start_as_current_span("plan") as span:
                span.set_attributes(
                    {"mesh.goal_id": goal.goal_id, "mesh.engine": self._engine.name}
                )
                return self._engine.plan(self._plan_request(goal, context))
        except EngineError as exc:
            return Unplanned(exc.category, str(exc), exc.usage)

    def _refuse(
        self, conn: Connection, goal: GoalRow, cause_id: str, unplanned: Unplanned
    ) -> list[ev.Event]:
        """End a goal that got no plan, charging it for what the engine spent trying."""
        L.add_usage(conn, goal.goal_id, "plan", unplanned.usage)
        return self._end(
            conn, goal, cause_id, category=unplanned.category, message=unplanned.message
        )

    def _plan_request(self, goal: GoalRow, context: str) -> PlanRequest:
        def validate(draft: PlanDraft) -> None:
            validate_plan(draft, self._registry, goal.max_steps)

        return PlanRequest(
            goal_id=goal.goal_id,
            text=goal.text,
            input=goal.input,
            tools=self._registry.specs(),
            max_steps=goal.max_steps,
            validate=validate,
            context=context,
        )

    def on_cancelled(
        self, event: ev.GoalCancelled, delivery: Delivery, conn: Connection
    ) -> list[ev.Event]:
        self._release(event.goal_id)
        goal = L.lock_goal(conn, event.goal_id)
        if goal is None or goal.status not in LIVE or goal.ending is not None:
            return []
        if self._on_cancel is not None:
            self._on_cancel(goal.goal_id)  # tell running tools, where they listen
        message = event.reason or f"cancelled by {event.requested_by}"
        return self._end(
            conn, goal, event.event_id, category="cancelled", message=message, status="cancelled"
        )

    def on_refused(
        self, event: ev.Event, category: str, reason: str, conn: Connection
    ) -> list[ev.Event]:
        """An event this planner could not handle ends its goal as failed, never stuck."""
        self._release(event.goal_id)
        if isinstance(event, ev.GoalSubmitted):
            L.insert_goal(conn, event, None, self.mesh)
        goal = L.lock_goal(conn, event.goal_id)
        if goal is None or goal.status not in LIVE:
            return []
        return self._finish_failed(
            conn, goal, event.event_id, "failed", "internal_error", f"{category}: {reason}", []
        )

    # -- task outcomes and verdicts ------------------------------------------------------------

    def on_outcome(
        self, event: ev.TaskCompleted | ev.TaskFailed, delivery: Delivery, conn: Connection
    ) -> list[ev.Event]:
        # The compare-and-set on the task is enough (a goal's results arrive in order on one
        # partition, so nothing else changes this task meanwhile); the snapshot makes it here.
        held = self._held_task(event.goal_id, event.task_id)
        if held is None:
            recorded = L.record_outcome(conn, event)
        elif held[1].status == "dispatched" and held[1].attempt == event.attempt:
            held[0].record_outcome(event, held[1])
            recorded = True
        else:
            recorded = False  # a late or repeated outcome
        if recorded:
            self._charge(conn, event.goal_id, f"tool:{event.tool}", event.usage)
        return []  # the evaluator's verdict decides what happens next

    def _charge(self, conn: Connection, goal_id: str, source: str, usage: ev.Usage) -> None:
        snapshot = self._held(goal_id)
        if snapshot is not None:
            snapshot.charge(L.Charge(goal_id, source, usage))
        else:
            L.add_usage(conn, goal_id, source, usage)

    def on_verdict(
        self, event: ev.TaskEvaluated, delivery: Delivery, conn: Connection
    ) -> list[ev.Event]:
        goal = self._goal(conn, event.goal_id)
        if goal is None or goal.status not in ("running", "waiting_human", "compensating"):
            return []  # a late verdict of a finished goal changes nothing
        task = self._record_verdict(conn, event)
        if task is None:
            return []  # a verdict on an attempt that is no longer current
        self._charge(conn, goal.goal_id, "evaluate", event.usage)
        if not (task.kind == "action" and goal.status == "running" and event.decision == "accept"):
            self._release(goal.goal_id)  # only accepting a step is followed by the snapshot
            goal = _locked(conn, goal.goal_id)  # the whole row: what follows may plan again
        if task.kind == "compensation":
            return self._compensation_verdict(conn, goal, task, event)
        if goal.status == "compensating":
            return self._settle_in_flight(conn, goal, task, event)
        # While one step waits for a human, independent branches go on.
        return self._action_verdict(conn, goal, task, event)

    def _record_verdict(self, conn: Connection, event: ev.TaskEvaluated) -> TaskRow | None:
        held = self._held_task(event.goal_id, event.task_id)
        if held is None:
            return L.record_verdict(conn, event)
        snapshot, task = held
        if task.status != "evaluating" or task.attempt != event.attempt:
            return None
        snapshot.record_verdict(event)
        return task

    def _succeed(self, conn: Connection, goal_id: str, task: TaskRow) -> TaskRow:
        snapshot = self._held(goal_id)
        if snapshot is not None:
            return snapshot.succeed(goal_id, task, self._clock())
        return L.succeed(conn, task, self._clock())

    def _action_verdict(
        self, conn: Connection, goal: GoalRow, task: TaskRow, verdict: ev.TaskEvaluated
    ) -> list[ev.Event]:
        decision = verdict.decision
        if decision == "accept":
            self._succeed(conn, goal.goal_id, task)
            return self._advance(conn, goal.goal_id, verdict.event_id)
        if decision == "retry":
            return self._retry(conn, goal, task, verdict)
        if decision == "escalate":
            return self._escalate(conn, goal, task, verdict.reason, verdict.event_id)
        if decision == "replan":
            return self._replan(conn, goal, task, verdict)
        L.fail_task(conn, task, self._clock())
        attempt = L.last_attempt(conn, task)
        return self._end(
            conn,
            goal,
            verdict.event_id,
            category="task_failed",
            message=f"step {task.step_id} failed: {verdict.reason}",
            failed=task,
            partial=_left_effects(attempt),
        )

    def _settle_in_flight(
        self, conn: Connection, goal: GoalRow, task: TaskRow, verdict: ev.TaskEvaluated
    ) -> list[ev.Event]:
        """A step that was running when the goal began to end: no retries now. If its tool did
        its work, the work is kept on record so the rollback undoes it."""
        attempt = L.last_attempt(conn, task)
        if attempt["status"] == "completed":
            L.succeed(conn, task, self._clock())
        else:
            L.fail_task(conn, task, self._clock())
        if L.compensation_started(conn, goal.goal_id):
            return []
        return self._roll_back(conn, goal.goal_id, verdict.event_id)

    def _compensation_verdict(
        self, conn: Connection, goal: GoalRow, task: TaskRow, verdict: ev.TaskEvaluated
    ) -> list[ev.Event]:
        if verdict.decision == "accept":
            L.succeed(conn, task, self._clock())
            conn.execute(
                "update tasks set status = 'compensated' where task_id = %s", (task.compensates,)
            )
            return self._advance(conn, goal.goal_id, verdict.event_id)
        if verdict.decision == "retry":
            return self._retry(conn, goal, task, verdict)
        return self._escalate(
            conn,
            goal,
            task,
            f"compensation {task.step_id} failed: {verdict.reason}",
            verdict.event_id,
        )

    def _retry(
        self, conn: Connection, goal: GoalRow, task: TaskRow, verdict: ev.TaskEvaluated
    ) -> list[ev.Event]:
        policy = self._registry.get(task.tool).retry
        used = task.attempt - task.attempt_floor
        stop = self._early_stop(conn, goal) if task.kind == "action" else None
        if stop is not None:
            L.fail_task(conn, task, self._clock())
            return self._end(
                conn,
                goal,
                verdict.event_id,
                category=stop[0],
                message=stop[1],
                failed=task,
                partial=_left_effects(L.last_attempt(conn, task)),
            )
        if used >= policy.max_attempts:
            reason = f"step {task.step_id} failed {used} time(s): {verdict.reason}"
            if policy.escalate_when_exhausted or task.kind == "compensation":
                return self._escalate(conn, goal, task, reason, verdict.event_id)
            L.fail_task(conn, task, self._clock())
            return self._end(
                conn,
                goal,
                verdict.event_id,
                category="retries_exhausted",
                message=reason,
                failed=task,
            )
        delay = policy.delay(used, self._draw())
        L.set_task(conn, task, "waiting_retry")
        L.schedule(
            conn,
            goal.goal_id,
            "retry",
            self._clock() + timedelta(seconds=delay),
            mesh=self.mesh,
            task_id=task.task_id,
            payload={
                "attempt": task.attempt,
                "feedback": verdict.feedback,
                "cause": verdict.event_id,
                "delay_s": delay,
            },
        )
        return []

    def _early_stop(self, conn: Connection, goal: GoalRow) -> tuple[str, str] | None:
        """Why a runaway goal should end now instead of retrying, as (category, message)."""
        failures, decisions = L.history_of(conn, goal.goal_id)
        if decide.repeated_failure(failures, self._limits.same_failure):
            category, message = failures[-1]
            times = self._limits.same_failure
            return (
                "repeated_failure",
                f"the same failure happened {times} times: {category}: {message}",
            )
        if decide.no_progress(decisions, self._limits.no_progress):
            return (
                "no_progress",
                f"no step succeeded in the last {self._limits.no_progress} verdicts",
            )
        return None

    # -- escalations -----------------------------------------------------------------------------

    def _escalate(
        self, conn: Connection, goal: GoalRow, task: TaskRow, reason: str, cause_id: str
    ) -> list[ev.Event]:
        attempt = L.last_attempt(conn, task)
        raised = ev.EscalationRaised(
            envelope=self._envelope(goal.goal_id, cause_id),
            escalation_id=ev.new_id(),
            task_id=task.task_id,
            reason=reason,
            evidence={
                "step": task.step_id,
                "tool": task.tool,
                "attempt": task.attempt,
                "arguments": attempt["arguments"],
                "outcome": attempt["status"],
                "category": attempt["category"],
                "message": attempt["message"],
                "result": attempt["result"],
            },
            options=ESCALATION_OPTIONS,
            expires_at=self._clock() + timedelta(seconds=self._limits.escalation_ttl_s),
            default_action=self._limits.escalation_default,
        )
        L.insert_escalation(conn, escalation=raised)
        L.set_task(conn, task, "waiting_human")
        L.set_goal(conn, goal.goal_id, "waiting_human")
        assert raised.expires_at is not None
        L.schedule(
            conn,
            goal.goal_id,
            "escalation_expiry",
            raised.expires_at,
            mesh=self.mesh,
            escalation_id=raised.escalation_id,
        )
        return [raised]

    def on_resolved(
        self, event: ev.EscalationResolved, delivery: Delivery, conn: Connection
    ) -> list[ev.Event]:
        self._release(event.goal_id)
        goal = L.lock_goal(conn, event.goal_id)
        if goal is None:
            return []
        closed = L.close_escalation(
            conn,
            event.escalation_id,
            status="resolved",
            action=event.action,
            values=event.values,
            by=event.resolved_by,
        )
        if closed is None:
            return []  # already answered, or expired
        return self._apply(
            conn, goal, closed["task_id"], event.action, event.values, event.event_id
        )

    def _apply(
        self,
        conn: Connection,
        goal: GoalRow,
        task_id: str | None,
        action: str,
        values: dict[str, Any],
        cause_id: str,
    ) -> list[ev.Event]:
        """Carry out a human's answer (or the expiry's default action) on the waiting task."""
        task = L.task(conn, task_id) if task_id else None
        if task is None or task.status != "waiting_human" or goal.status not in LIVE:
            return []
        resumed = "compensating" if goal.ending is not None else "running"
        if L.open_escalations(conn, goal.goal_id):
            resumed = "waiting_human"  # another question is still open
        L.set_goal(conn, goal.goal_id, resumed)
        goal = dataclasses.replace(goal, status=resumed)
        if action == "approve":
            L.succeed(conn, task, self._clock())
            if task.kind == "compensation":
                conn.execute(
                    "update tasks set status = 'compensated' where task_id = %s",
                    (task.compensates,),
                )
            return self._advance(conn, goal.goal_id, cause_id)
        if action in ("retry", "set"):
            if action == "set":
                task = L.replace_arguments(conn, task, values)
            conn.execute(
                "update tasks set attempt_floor = attempt where task_id = %s", (task.task_id,)
            )
            note = HUMAN_RETRY + (f", with {values}" if values else "")
            return self._dispatch(conn, goal, [task], cause_id, feedback=note)
        return self._abort(conn, goal, task, cause_id)

    def _abort(
        self, conn: Connection, goal: GoalRow, task: TaskRow, cause_id: str
    ) -> list[ev.Event]:
        L.fail_task(conn, task, self._clock())
        if task.kind == "compensation":  # give up rolling back: report what was undone
            ending = goal.ending or {}
            return self._finish_failed(
                conn,
                goal,
                cause_id,
                ending.get("status", "failed"),
                "compensation_aborted",
                f"rollback stopped at {task.step_id}; before that: {ending.get('message', '')}",
                self._compensated(conn, goal),
            )
        attempt = L.last_attempt(conn, task)
        return self._end(
            conn,
            goal,
            cause_id,
            category="aborted",
            message=f"step {task.step_id} aborted",
            failed=task,
            partial=_left_effects(attempt),
        )

    def on_timer(self, conn: Connection, timer: dict[str, Any]) -> list[ev.Event]:
        """A durable timer came due: a retry to dispatch, or an escalation that expired."""
        self._release(timer["goal_id"])
        goal = L.lock_goal(conn, timer["goal_id"])
        if goal is None or goal.status not in LIVE:
            return []
        payload = timer["payload"]
        if timer["kind"] == "escalation_expiry":
            closed = L.close_escalation(
                conn,
                timer["escalation_id"],
                status="expired",
                action=self._limits.escalation_default,
                values={},
                by="expiry",
            )
            if closed is None:
                return []
            return self._apply(
                conn,
                goal,
                closed["task_id"],
                closed["default_action"],
                {},
                payload.get("cause", ""),
            )
        task = L.task(conn, timer["task_id"])
        if task is None or task.status != "waiting_retry" or task.attempt != payload["attempt"]:
            return []
        return self._dispatch(
            conn, goal, [task], payload.get("cause"), feedback=payload["feedback"]
        )

    def on_timer_error(self, conn: Connection, goal_id: str, reason: str) -> list[ev.Event]:
        """A timer this planner could not handle ends its goal, rather than leaving it waiting."""
        self._release(goal_id)
        goal = L.lock_goal(conn, goal_id)
        if goal is None or goal.status not in LIVE:
            return []
        return self._finish_failed(conn, goal, None, "failed", "internal_error", reason, [])

    # -- re-planning -----------------------------------------------------------------------------

    def _replan(
        self, conn: Connection, goal: GoalRow, task: TaskRow, verdict: ev.TaskEvaluated
    ) -> list[ev.Event]:
        L.fail_task(conn, task, self._clock())
        if goal.replans >= goal.max_replans:
            return self._end(
                conn,
                goal,
                verdict.event_id,
                category="replans_exhausted",
                message=f"step {task.step_id} failed after {goal.replans} re-plan(s)",
                failed=task,
            )
        done = [
            t.step_id
            for t in L.tasks_of(conn, goal.goal_id, goal.plan_version)
            if t.status == "succeeded"
        ]
        context = (
            f"Plan version {goal.plan_version} failed at step {task.step_id} ({task.tool}): "
            f"{verdict.reason}. Completed steps, kept as they are: {', '.join(done) or 'none'}. "
            "Propose a plan that reaches the goal another way."
        )
        planned = self._plan(conn, goal, verdict.event_id, context)
        if not isinstance(planned, Planned):
            return planned
        L.count_replan(conn, goal.goal_id)
        L.supersede(conn, goal.goal_id, goal.plan_version)
        version = goal.plan_version + 1
        L.insert_plan(conn, goal, planned, self._pools, reason=context)
        L.carry_over(conn, goal.goal_id, goal.plan_version, version)
        return self._advance(conn, goal.goal_id, verdict.event_id)

    # -- moving forward --------------------------------------------------------------------------

    def _advance(self, conn: Connection, goal_id: str, cause_id: str) -> list[ev.Event]:
        goal = self._goal(conn, goal_id)
        assert goal is not None
        if goal.status == "compensating":
            undo = self._tasks(conn, goal, kind="compensation")
            if decide.all_succeeded(undo):
                ending = goal.ending or {}
                return self._finish_failed(
                    conn,
                    goal,
                    cause_id,
                    ending.get("status", "failed"),
                    ending.get("category", "failed"),
                    ending.get("message", ""),
                    [t.step_id.removeprefix("undo_") for t in undo],
                )
            return self._dispatch(conn, goal, decide.ready(undo), cause_id, feedback=None)
        tasks = self._tasks(conn, goal)
        if decide.all_succeeded(tasks):
            return self._complete(conn, goal, tasks, cause_id)
        return self._dispatch(conn, goal, decide.ready(tasks), cause_id, feedback=None, tasks=tasks)

    def _dispatch(
        self,
        conn: Connection,
        goal: GoalRow,
        ready: list[TaskRow],
        cause_id: str | None,
        *,
        feedback: str | None,
        tasks: list[TaskRow] | None = None,
    ) -> list[ev.Event]:
        """Dispatch ``ready`` (``tasks``: the plan's action steps, when the caller has them)."""
        if tasks is None:
            tasks = self._tasks(conn, goal)
        results = decide.results_by_step(tasks)
        busy = decide.in_flight(tasks)
        out: list[ev.Event] = []
        for task in ready:
            if task.kind == "action":  # compensations run whatever the budget: they clean up
                if decide.one_at_a_time(goal) and (busy or out):
                    self._release(goal.goal_id)
                    L.requeue(conn, task)  # the next verdict dispatches it
                    continue
                problem = decide.budget_problem(goal, self._clock())
                if problem is not None:  # checked before every dispatch
                    return out + self._end(
                        conn, goal, cause_id, category=problem[0], message=problem[1]
                    )
            arguments = resolve_arguments(task.arguments, results)
            attempt = self._send(conn, goal.goal_id, task, arguments, feedback)
            if task.kind == "action":
                goal = decide.evolve(goal, steps_used=goal.steps_used + 1)
            out.append(self._assignment(goal, task, attempt, arguments, cause_id, feedback))
        return out

    def _send(
        self,
        conn: Connection,
        goal_id: str,
        task: TaskRow,
        arguments: dict[str, Any],
        feedback: str | None,
    ) -> int:
        """Record the task's next attempt; returns its number."""
        snapshot = self._held(goal_id)
        if snapshot is None:
            return L.dispatch(conn, goal_id, task, arguments, feedback)
        attempt = task.attempt + 1
        snapshot.dispatch(L.Dispatch(goal_id, task, attempt, arguments, feedback))
        return attempt

    def _assignment(
        self,
        goal: GoalRow,
        task: TaskRow,
        attempt: int,
        arguments: dict[str, Any],
        cause_id: str | None,
        feedback: str | None,
    ) -> ev.TaskAssigned:
        return ev.TaskAssigned(
            envelope=self._envelope(goal.goal_id, cause_id),
            task_id=task.task_id,
            plan_version=goal.plan_version,
            step_id=task.step_id,
            tool=task.tool,
            arguments=arguments,
            attempt=attempt,
            pool=task.pool,
            kind=task.kind,
            timeout_s=self._registry.get(task.tool).timeout_s,
            idempotency_key=task.idempotency_key,
            feedback=feedback,
        )

    # -- ending ----------------------------------------------------------------------------------

    def _complete(
        self, conn: Connection, goal: GoalRow, tasks: list[TaskRow], cause_id: str | None
    ) -> list[ev.Event]:
        summary = f"all {len(tasks)} steps succeeded: " + ", ".join(t.step_id for t in tasks)
        output = decide.results_by_step(tasks)
        usage, steps, elapsed = self._totals(conn, goal)
        finish = L.Finish(goal.goal_id, "completed", summary, output=output)
        snapshot = self._held(goal.goal_id)
        if snapshot is not None:
            snapshot.finish(finish)
        else:
            L.finish_goals(conn, [finish])
        return [
            ev.GoalCompleted(
                envelope=self._envelope(goal.goal_id, cause_id),
                summary=summary,
                output=output,
                steps=steps,
                usage=usage,
                duration_s=elapsed,
            )
        ]

    def _end(
        self,
        conn: Connection,
        goal: GoalRow,
        cause_id: str | None,
        *,
        category: str,
        message: str,
        status: str = "failed",
        failed: TaskRow | None = None,
        partial: bool = False,
    ) -> list[ev.Event]:
        """End the goal: no more dispatches; roll back per its compensation policy first."""
        self._release(goal.goal_id)
        if goal.ending is not None:
            return []  # already ending
        ending = {
            "status": status,
            "category": category,
            "message": message,
            "failed": failed.step_id if failed else None,
            "partial": partial,
        }
        L.cancel_waiting_actions(conn, goal.goal_id)
        L.set_goal(conn, goal.goal_id, "compensating", ending)
        L.drop_escalations(conn, goal.goal_id)
        return self._roll_back(conn, goal.goal_id, cause_id)

    def _roll_back(self, conn: Connection, goal_id: str, cause_id: str | None) -> list[ev.Event]:
        """Once no step is in flight any more (a running step's effects must be known before they
        can be undone), start the compensation chain, or finish when there is nothing to undo."""
        goal = _locked(conn, goal_id)
        ending = goal.ending or {}
        tasks = L.tasks_of(conn, goal_id, goal.plan_version)
        if any(t.status in ("dispatched", "evaluating") for t in tasks):
            return []  # the in-flight steps' verdicts call back here
        failed = next((t for t in tasks if t.step_id == ending.get("failed")), None)
        undo = saga.to_undo(
            tasks,
            policy=goal.compensation_policy,
            registry=self._registry,
            failed=failed,
            failed_partially=bool(ending.get("partial")),
        )
        if not undo:
            return self._finish_failed(
                conn, goal, cause_id, ending["status"], ending["category"], ending["message"], []
            )
        L.insert_compensations(conn, goal, [self._compensation(conn, t) for t in undo])
        return self._advance(conn, goal_id, cause_id or "")

    def _compensation(
        self, conn: Connection, step: TaskRow
    ) -> tuple[TaskRow, str, dict[str, Any], str]:
        name = self._registry.get(step.tool).compensation
        assert name is not None
        tool = self._registry.get(name)
        attempt = L.last_attempt(conn, step)
        completed = attempt["status"] == "completed"
        arguments = saga.compensation_arguments(
            list(tool.args.model_fields),
            arguments=attempt["arguments"],
            result=step.result
            if step.status == "succeeded"
            else (attempt["result"] if completed else None),
            details=None if completed else attempt["result"],
        )
        return step, name, arguments, tool.pool

    def _compensated(self, conn: Connection, goal: GoalRow) -> list[str]:
        undo = L.tasks_of(conn, goal.goal_id, goal.plan_version, kind="compensation")
        return [t.step_id.removeprefix("undo_") for t in undo if t.status == "succeeded"]

    def _finish_failed(
        self,
        conn: Connection,
        goal: GoalRow,
        cause_id: str | None,
        status: str,
        category: str,
        message: str,
        compensated: list[str],
    ) -> list[ev.Event]:
        self._release(goal.goal_id)
        L.finish_goal(
            conn, goal.goal_id, status=status, summary=message, category=category, message=message
        )
        usage, steps, elapsed = self._totals(conn, goal)
        return [
            ev.GoalFailed(
                envelope=self._envelope(goal.goal_id, cause_id),
                category=category,
                message=message,
                summary=message,
                steps=steps,
                usage=usage,
                duration_s=elapsed,
                compensated=compensated,
            )
        ]

    @staticmethod
    def _envelope(goal_id: str, cause_id: str | None) -> ev.Envelope:
        return ev.Envelope(
            goal_id=goal_id,
            producer_agent=AGENT,
            correlation_id=goal_id,
            causation_id=cause_id or None,
        )


def _planned(goal: GoalRow) -> GoalRow:
    """A new goal's row once its first plan is stored (``L.take_in``)."""
    return decide.evolve(goal, status="running", plan_version=L.FIRST_PLAN)


def _left_effects(attempt: dict[str, Any]) -> bool:
    """Whether a step that failed for good left effects to undo: it did part of its work, or its
    tool completed and the result was rejected (or aborted) afterwards."""
    return bool(attempt["category"] == "partial" or attempt["status"] == "completed")


def _locked(conn: Connection, goal_id: str) -> GoalRow:
    goal = L.lock_goal(conn, goal_id)
    assert goal is not None
    return goal


def _goal_traceparent(delivery: Delivery) -> str | None:
    """The goal's trace, kept so that what its timers send joins it: the submitter's span, or,
    when the submission came without one, the span this planner handles it in (the root)."""
    here: Headers = []
    inject(here)
    for key, value in (*delivery.headers, *here):  # the record's own first
        if key == "traceparent" and isinstance(value, bytes):
            return value.decode("latin-1")
    return None
