"""The planner agent.

Consumes: ``goals`` (GoalSubmitted, GoalCancelled) and ``results`` (TaskCompleted, TaskFailed,
TaskEvaluated). Emits, through the ledger's outbox: TaskAssigned on ``tasks``, GoalCompleted and
GoalFailed on ``results``. Run it with ``mesh run planner``; any number may run.

For each goal it asks the reasoning engine for a plan, validates it against the tool catalogue,
stores it as a plan version, and dispatches every task whose dependencies are done, all at once.
Verdicts advance the plan: accept dispatches what became ready, retry dispatches the next attempt,
fail ends the goal. Every change is a compare-and-set in the ledger, made in the same transaction
as the events that announce it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agents import events as ev
from agents.engines.base import Engine, EngineError, PlanDraft, PlanRequest
from agents.ledger.db import Connection
from agents.ledger.outbox import LedgerHandler
from agents.planner import decide
from agents.planner import ledger as L  # noqa: N812 - the ledger queries read best qualified
from agents.planner.decide import GoalRow, TaskRow
from agents.planner.plan import resolve_arguments, validate_plan
from agents.runtime.consumer import Delivery
from agents.runtime.telemetry import tracer
from agents.tools.base import Registry

AGENT = "planner"


class Planner:
    """The planner's decisions, one method per event type."""

    def __init__(
        self,
        *,
        engine: Engine,
        registry: Registry,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._clock = clock
        self._pools = {t.name: t.pool for t in registry}

    def handlers(self) -> dict[type[ev.Event], LedgerHandler]:
        return {
            ev.GoalSubmitted: self.on_submitted,
            ev.GoalCancelled: self.on_cancelled,
            ev.TaskCompleted: self.on_outcome,
            ev.TaskFailed: self.on_outcome,
            ev.TaskEvaluated: self.on_verdict,
        }

    def on_refused(
        self, event: ev.Event, category: str, reason: str, conn: Connection
    ) -> list[ev.Event]:
        """An event this planner could not handle ends its goal as failed, never stuck."""
        if isinstance(event, ev.GoalSubmitted):
            L.insert_goal(conn, event, None)
        goal = L.lock_goal(conn, event.goal_id)
        if goal is None or goal.status not in ("planning", "running"):
            return []
        return self._fail(conn, goal, event, "internal_error", f"{category}: {reason}")

    def on_submitted(
        self, event: ev.GoalSubmitted, delivery: Delivery, conn: Connection
    ) -> list[ev.Event]:
        if not L.insert_goal(conn, event, _traceparent(delivery)):
            return []  # the same goal submitted again: it is already in hand
        goal = L.lock_goal(conn, event.goal_id)
        assert goal is not None
        try:
            with tracer.start_as_current_span("plan") as span:
                span.set_attributes(
                    {"mesh.goal_id": goal.goal_id, "mesh.engine": self._engine.name}
                )
                planned = self._engine.plan(self._plan_request(event))
        except EngineError as exc:
            L.add_usage(conn, goal.goal_id, "plan", exc.usage)
            return self._fail(conn, goal, event, exc.category, str(exc))
        L.add_usage(conn, goal.goal_id, "plan", planned.usage)
        L.insert_plan(conn, goal, planned, self._pools)
        return self._advance(conn, event.goal_id, event)

    def _plan_request(self, event: ev.GoalSubmitted) -> PlanRequest:
        def validate(draft: PlanDraft) -> None:
            validate_plan(draft, self._registry, event.max_steps)

        return PlanRequest(
            goal_id=event.goal_id,
            text=event.text,
            input=event.input,
            tools=self._registry.specs(),
            max_steps=event.max_steps,
            validate=validate,
        )

    def on_cancelled(
        self, event: ev.GoalCancelled, delivery: Delivery, conn: Connection
    ) -> list[ev.Event]:
        goal = L.lock_goal(conn, event.goal_id)
        if goal is None or goal.status not in ("planning", "running", "waiting_human"):
            return []
        return self._fail(conn, goal, event, "cancelled", event.reason or "cancelled", "cancelled")

    def on_outcome(
        self, event: ev.TaskCompleted | ev.TaskFailed, delivery: Delivery, conn: Connection
    ) -> list[ev.Event]:
        goal = L.lock_goal(conn, event.goal_id)
        if goal is not None and L.record_outcome(conn, event):
            L.add_usage(conn, goal.goal_id, f"tool:{event.tool}", event.usage)
        return []  # the evaluator's verdict decides what happens next

    def on_verdict(
        self, event: ev.TaskEvaluated, delivery: Delivery, conn: Connection
    ) -> list[ev.Event]:
        goal = L.lock_goal(conn, event.goal_id)
        if goal is None or goal.status != "running":
            return []  # late verdicts of a finished goal are recorded nowhere else
        task = L.record_verdict(conn, event)
        if task is None:
            return []  # a verdict on an attempt that is no longer current
        L.add_usage(conn, goal.goal_id, "evaluate", event.usage)
        if event.decision == "accept":
            L.succeed(conn, task, self._clock())
            return self._advance(conn, goal.goal_id, event)
        if event.decision == "retry":
            return self._retry(conn, goal, task, event)
        L.fail_task(conn, task, self._clock())
        return self._fail(
            conn, goal, event, "task_failed", f"step {task.step_id} failed: {event.reason}"
        )

    def _retry(
        self, conn: Connection, goal: GoalRow, task: TaskRow, verdict: ev.TaskEvaluated
    ) -> list[ev.Event]:
        policy = self._registry.get(task.tool).retry
        if task.attempt >= policy.max_attempts:
            L.fail_task(conn, task, self._clock())
            return self._fail(
                conn,
                goal,
                verdict,
                "retries_exhausted",
                f"step {task.step_id} failed {task.attempt} time(s): {verdict.reason}",
            )
        tasks = L.tasks_of(conn, goal.goal_id, goal.plan_version)
        return self._dispatch(conn, goal, [task], tasks, verdict, feedback=verdict.feedback)

    def _advance(self, conn: Connection, goal_id: str, cause: ev.Event) -> list[ev.Event]:
        goal = L.lock_goal(conn, goal_id)
        assert goal is not None
        tasks = L.tasks_of(conn, goal_id, goal.plan_version)
        if decide.all_succeeded(tasks):
            return self._complete(conn, goal, tasks, cause)
        return self._dispatch(conn, goal, decide.ready(tasks), tasks, cause, feedback=None)

    def _dispatch(
        self,
        conn: Connection,
        goal: GoalRow,
        ready: list[TaskRow],
        tasks: list[TaskRow],
        cause: ev.Event,
        *,
        feedback: str | None,
    ) -> list[ev.Event]:
        results = decide.results_by_step(tasks)
        out: list[ev.Event] = []
        for task in ready:
            problem = decide.budget_problem(goal, self._clock())
            if problem is not None:  # checked before every dispatch: never over by more than one
                return self._fail(conn, goal, cause, *problem)
            arguments = resolve_arguments(task.arguments, results)
            attempt = L.dispatch(conn, goal.goal_id, task, arguments, feedback)
            _dispatch_span(goal.goal_id, task, attempt)
            goal = dataclasses.replace(goal, steps_used=goal.steps_used + 1)
            out.append(self._assignment(goal, task, attempt, arguments, cause, feedback))
        return out

    def _assignment(
        self,
        goal: GoalRow,
        task: TaskRow,
        attempt: int,
        arguments: dict[str, Any],
        cause: ev.Event,
        feedback: str | None,
    ) -> ev.TaskAssigned:
        return ev.TaskAssigned(
            envelope=self._envelope(goal.goal_id, cause),
            task_id=task.task_id,
            plan_version=goal.plan_version,
            step_id=task.step_id,
            tool=task.tool,
            arguments=arguments,
            attempt=attempt,
            pool=task.pool,
            timeout_s=self._registry.get(task.tool).timeout_s,
            idempotency_key=task.idempotency_key,
            feedback=feedback,
        )

    def _complete(
        self, conn: Connection, goal: GoalRow, tasks: list[TaskRow], cause: ev.Event
    ) -> list[ev.Event]:
        summary = f"all {len(tasks)} steps succeeded: " + ", ".join(t.step_id for t in tasks)
        output = decide.results_by_step(tasks)
        L.finish_goal(conn, goal.goal_id, status="completed", summary=summary, output=output)
        usage, steps, elapsed = L.usage_of(conn, goal.goal_id)
        return [
            ev.GoalCompleted(
                envelope=self._envelope(goal.goal_id, cause),
                summary=summary,
                output=output,
                steps=steps,
                usage=usage,
                duration_s=elapsed,
            )
        ]

    def _fail(
        self,
        conn: Connection,
        goal: GoalRow,
        cause: ev.Event,
        category: str,
        message: str,
        status: str = "failed",
    ) -> list[ev.Event]:
        L.finish_goal(
            conn, goal.goal_id, status=status, summary=message, category=category, message=message
        )
        usage, steps, elapsed = L.usage_of(conn, goal.goal_id)
        return [
            ev.GoalFailed(
                envelope=self._envelope(goal.goal_id, cause),
                category=category,
                message=message,
                summary=message,
                steps=steps,
                usage=usage,
                duration_s=elapsed,
            )
        ]

    @staticmethod
    def _envelope(goal_id: str, cause: ev.Event) -> ev.Envelope:
        return ev.Envelope(
            goal_id=goal_id,
            producer_agent=AGENT,
            correlation_id=goal_id,
            causation_id=cause.event_id,
        )


def _traceparent(delivery: Delivery) -> str | None:
    for key, value in delivery.headers:
        if key == "traceparent" and value is not None:
            return value.decode("latin-1")
    return None


def _dispatch_span(goal_id: str, task: TaskRow, attempt: int) -> None:
    """A span marking the decision to dispatch (the send itself has its own)."""
    attributes: dict[str, str | int] = {
        "mesh.goal_id": goal_id,
        "mesh.task_id": task.task_id,
        "mesh.tool": task.tool,
        "mesh.attempt": attempt,
    }
    with tracer.start_as_current_span(f"dispatch {task.step_id}", attributes=attributes):
        pass
