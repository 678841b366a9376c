"""The evaluator agent.

Consumes: ``results`` (TaskCompleted, TaskFailed). Emits: TaskEvaluated on ``results``. Run it
with ``mesh run evaluator``; any number may run.

For each outcome it checks the result against the tool's result model and the tool's own checks,
asks the reasoning engine for a judgement with a confidence, and applies the runtime's policy: a
failure is retried only if its category is one the tool's retry policy names and attempts remain.
It reads goals from the ledger (once each: they are fixed once submitted), and an attempt's
arguments when the outcome does not carry them; it writes nothing there: the planner records
verdicts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opentelemetry import trace
from psycopg import Cursor
from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from agents import events as ev
from agents.engines.base import Engine, EngineError, Judgement, JudgeRequest
from agents.ledger.db import Connection, remember
from agents.runtime.consumer import Delivery
from agents.runtime.errors import Category, PermanentError
from agents.tools.base import Registry, Tool, UnknownToolError

log = logging.getLogger(__name__)
AGENT = "evaluator"


@dataclass(frozen=True)
class _Goal:
    """What the ledger says about a goal; fixed once it is submitted."""

    text: str
    input: dict[str, Any]
    threshold: float
    deadline: datetime | None


@dataclass(frozen=True)
class _Context:
    """What the attempt being judged ran with, and its goal."""

    arguments: dict[str, Any]
    goal: _Goal


_GOALS_KEPT = 1024  # goals remembered for their later outcomes (a chain's next steps)
_GOAL_COLUMNS = "g.goal_id, g.text, g.input, g.confidence_threshold, g.deadline_at"
_ATTEMPTS_QUERY = (
    f"select {_GOAL_COLUMNS}, a.task_id, a.attempt, a.arguments "  # noqa: S608
    "from unnest(%b::text[], %b::int[]) as k(task_id, attempt) "
    "join attempts a using (task_id, attempt) "
    "join tasks t using (task_id) join goals g on g.goal_id = t.goal_id"
)
_GOALS_QUERY = f"select {_GOAL_COLUMNS} from goals g where g.goal_id = any(%b)"  # noqa: S608


def _goal_of(row: Sequence[Any]) -> _Goal:
    return _Goal(str(row[1]), dict(row[2]), float(row[3]), row[4])


def _confident_enough(judgement: Judgement, threshold: float) -> Judgement:
    """An accept below the confidence threshold (the goal's or the tool's) goes to a human."""
    if judgement.decision != "accept" or judgement.confidence >= threshold:
        return judgement
    return judgement.model_copy(
        update={
            "decision": "escalate",
            "reason": f"confidence {judgement.confidence:.2f} is below the threshold "
            f"{threshold:.2f}: {judgement.reason}",
        }
    )


class UnknownTaskError(PermanentError):
    """An outcome of an attempt the ledger does not hold: nobody waits for its verdict."""

    category = Category.UNKNOWN_TASK


class Evaluator:
    """Judges task outcomes."""

    def __init__(self, *, engine: Engine, registry: Registry, db: ConnectionPool) -> None:
        self._engine = engine
        self._registry = registry
        self._db = db
        self._goals: dict[str, _Goal] = {}
        self._arguments: dict[tuple[str, int], dict[str, Any]] = {}

    def before_batch(self, events: Sequence[ev.Event]) -> None:
        """Read from the ledger, in one round trip, what the batch's outcomes do not carry: the
        goals not seen yet and the arguments of outcomes from older workers (usually nothing:
        outcomes carry their arguments, and a goal is read once for all its outcomes)."""
        outcomes = [e for e in events if isinstance(e, ev.TaskCompleted | ev.TaskFailed)]
        keys = [(e.task_id, e.attempt) for e in outcomes if e.arguments is None]
        goals = sorted({e.goal_id for e in outcomes if e.arguments is not None} - set(self._goals))
        if not keys and not goals:
            return
        with self._db.connection() as conn, conn.pipeline():
            attempts = self._read_attempts(conn, keys) if keys else None
            found = conn.execute(_GOALS_QUERY, (goals,)) if goals else None
            for row in attempts.fetchall() if attempts is not None else ():
                self._arguments[(str(row[5]), int(row[6]))] = dict(row[7])
                self._remember(str(row[0]), _goal_of(row))
            for row in found.fetchall() if found is not None else ():
                self._remember(str(row[0]), _goal_of(row))

    @staticmethod
    def _read_attempts(conn: Connection, keys: Sequence[tuple[str, int]]) -> Cursor[Any]:
        return conn.execute(_ATTEMPTS_QUERY, ([k[0] for k in keys], [k[1] for k in keys]))

    def after_batch(self) -> None:
        self._arguments = {}

    def _remember(self, goal_id: str, goal: _Goal) -> None:
        remember(self._goals, goal_id, goal, most=_GOALS_KEPT)

    def on_outcome(
        self, event: ev.TaskCompleted | ev.TaskFailed, delivery: Delivery
    ) -> list[ev.Event]:
        try:
            tool = self._registry.get(event.tool)
        except UnknownToolError as exc:
            return [
                self._verdict(event, Judgement(decision="fail", confidence=1.0, reason=str(exc)))
            ]
        context = self._context(event)
        arguments = context.arguments
        problems = _problems(tool, arguments, event) if isinstance(event, ev.TaskCompleted) else []
        request = self._request(event, tool, context, problems)
        try:
            judged = self._engine.judge(request)
        except EngineError as exc:
            judgement = Judgement(decision="fail", confidence=0.0, reason=f"{exc.category}: {exc}")
            return [self._verdict(event, judgement, exc.usage)]
        judgement = _confident_enough(
            self._policy(event, tool, judged.judgement),
            max(context.goal.threshold, tool.confidence_threshold),
        )
        verdict = self._verdict(event, judgement, judged.usage)
        # On the judged record's span: a span of its own per verdict cost as much again.
        trace.get_current_span().set_attributes(
            {"mesh.decision": verdict.decision, "mesh.confidence": verdict.confidence}
        )
        return [verdict]

    def on_failure(
        self, event: ev.TaskCompleted | ev.TaskFailed, category: str, reason: str
    ) -> list[ev.Event]:
        """The verdict on an outcome that could not be judged (its record was dead-lettered):
        a failure, so the planner decides what next instead of waiting for ever."""
        if category == Category.UNKNOWN_TASK:
            return []
        judgement = Judgement(decision="fail", confidence=0.0, reason=f"{category}: {reason}")
        return [self._verdict(event, judgement)]

    def _context(self, event: ev.TaskCompleted | ev.TaskFailed) -> _Context:
        key = (event.task_id, event.attempt)
        arguments = event.arguments if event.arguments is not None else self._arguments.get(key)
        goal = self._goals.get(event.goal_id)
        if arguments is not None and goal is not None:
            return _Context(arguments, goal)
        with self._db.connection() as conn:  # not read with the batch (a handler's retry)
            row = self._read_attempts(conn, [key]).fetchone()
        if row is None:  # the planner commits before it dispatches: forged, replayed or pruned
            raise UnknownTaskError(f"the ledger holds no {event.task_id} attempt {event.attempt}")
        goal = _goal_of(row)
        self._remember(event.goal_id, goal)
        return _Context(arguments if arguments is not None else dict(row[7]), goal)

    def _request(
        self,
        event: ev.TaskCompleted | ev.TaskFailed,
        tool: Tool[Any, Any],
        context: _Context,
        problems: list[str],
    ) -> JudgeRequest:
        if isinstance(event, ev.TaskCompleted):
            outcome, result = "completed", event.result
        else:
            outcome = "failed"
            result = {
                "category": event.category,
                "message": event.message,
                "retryable": event.retryable,
                "details": event.details,
            }
        return JudgeRequest(
            goal_id=event.goal_id,
            goal_text=context.goal.text,
            step_id=event.step_id,
            tool=tool.spec(),
            arguments=context.arguments,
            outcome=outcome,  # type: ignore[arg-type]
            result=result,
            problems=problems,
            goal_input=context.goal.input,
            deadline=context.goal.deadline,
        )

    def _policy(
        self, event: ev.TaskCompleted | ev.TaskFailed, tool: Tool[Any, Any], judged: Judgement
    ) -> Judgement:
        """The runtime, not the engine, decides whether a failure may be retried at all (the
        planner, which knows the attempts a human granted, decides when retries run out)."""
        if judged.decision != "retry":
            return judged
        retryable = isinstance(event, ev.TaskCompleted) or (
            event.retryable and event.category in tool.retry.retry_on
        )
        if retryable:
            return judged
        reason = f"{judged.reason} (not a retryable failure)"
        return judged.model_copy(update={"decision": "fail", "reason": reason})

    def _verdict(
        self,
        event: ev.TaskCompleted | ev.TaskFailed,
        judgement: Judgement,
        usage: ev.Usage | None = None,
    ) -> ev.TaskEvaluated:
        return ev.TaskEvaluated(
            envelope=ev.Envelope(
                goal_id=event.goal_id,
                producer_agent=AGENT,
                correlation_id=event.envelope.correlation_id,
                causation_id=event.event_id,
            ),
            task_id=event.task_id,
            step_id=event.step_id,
            attempt=event.attempt,
            decision=judgement.decision,
            confidence=judgement.confidence,
            reason=judgement.reason,
            feedback=judgement.feedback,
            usage=usage or ev.Usage(),
        )


def _problems(
    tool: Tool[Any, Any], arguments: dict[str, Any], event: ev.TaskCompleted
) -> list[str]:
    """What the result model and the tool's own checks find wrong with a result."""
    try:
        result = tool.result.model_validate(event.result)
        args = tool.args.model_validate(arguments)
    except ValidationError as exc:
        return [f"result does not match {tool.result.__name__}: {exc.error_count()} error(s)"]
    return [p for check in tool.checks if (p := check(args, result)) is not None]
