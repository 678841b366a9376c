"""The planner's ledger queries. Every change to a task is a compare-and-set on its attempt, so a
late or repeated result can never overwrite a newer state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from agents import events as ev
from agents.engines.base import Planned, PlanStep
from agents.ledger.db import Connection
from agents.planner.decide import GoalRow, TaskRow

_GOAL_COLUMNS = (
    "goal_id, text, input, status, max_steps, max_tokens, budget_usd, deadline_at, plan_version, "
    "steps_used, input_tokens + output_tokens as tokens, cost_usd, submitted_at, max_replans, "
    "replans, compensation_policy, ending"
)
_TASK_COLUMNS = (
    "task_id, step_id, tool, arguments, depends_on, pool, status, attempt, idempotency_key, "
    "result, kind, attempt_floor, compensates"
)


def insert_goal(
    conn: Connection, goal: ev.GoalSubmitted, trace_parent: str | None, mesh: str
) -> bool:
    """Record a new goal; False when it is already known (a repeated submission)."""
    row = conn.execute(
        "insert into goals (goal_id, text, input, status, max_steps, max_tokens, budget_usd, "
        "deadline_at, confidence_threshold, submitted_by, trace_parent, submitted_at, "
        "max_replans, compensation_policy, mesh) "
        "values (%s, %s, %s, 'planning', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "on conflict (goal_id) do nothing returning goal_id",
        (
            goal.goal_id,
            goal.text,
            Jsonb(goal.input),
            goal.max_steps,
            goal.max_tokens,
            goal.budget_usd,
            goal.deadline_at,
            goal.confidence_threshold,
            goal.submitted_by,
            trace_parent,
            goal.envelope.occurred_at,
            goal.max_replans,
            goal.compensation_policy,
            mesh,
        ),
    ).fetchone()
    return row is not None


def lock_goal(conn: Connection, goal_id: str) -> GoalRow | None:
    """The goal's row, locked until the transaction ends (planners serialise on it)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"select {_GOAL_COLUMNS} from goals where goal_id = %s for update",  # noqa: S608 - constant columns
            (goal_id,),
        ).fetchone()
    return GoalRow(**row) if row else None


def tasks_of(
    conn: Connection, goal_id: str, plan_version: int, kind: str = "action"
) -> list[TaskRow]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"select {_TASK_COLUMNS} from tasks where goal_id = %s and plan_version = %s "  # noqa: S608
            "and kind = %s order by task_id",
            (goal_id, plan_version, kind),
        ).fetchall()
    return [_task(r) for r in rows]


def task(conn: Connection, task_id: str) -> TaskRow | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"select {_TASK_COLUMNS} from tasks where task_id = %s for update",  # noqa: S608
            (task_id,),
        ).fetchone()
    return _task(row) if row else None


def _task(row: dict[str, Any]) -> TaskRow:
    return TaskRow(**(row | {"depends_on": tuple(row["depends_on"])}))


def insert_plan(
    conn: Connection, goal: GoalRow, planned: Planned, pools: dict[str, str], reason: str = ""
) -> int:
    """Store a new plan version and its tasks; returns the version."""
    version = goal.plan_version + 1
    steps = planned.draft.steps
    conn.execute(
        "insert into plans (goal_id, version, engine, rationale, steps, reason) "
        "values (%s, %s, %s, %s, %s, %s)",
        (
            goal.goal_id,
            version,
            planned.engine,
            planned.draft.rationale,
            Jsonb([s.model_dump() for s in steps]),
            reason,
        ),
    )
    _insert_tasks(conn, goal.goal_id, version, steps, pools)
    conn.execute(
        "update goals set plan_version = %s, status = 'running' where goal_id = %s",
        (version, goal.goal_id),
    )
    return version


def _insert_tasks(
    conn: Connection, goal_id: str, version: int, steps: Sequence[PlanStep], pools: dict[str, str]
) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "insert into tasks (task_id, goal_id, plan_version, step_id, tool, arguments, "
            "depends_on, pool, status, idempotency_key) "
            "values (%s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s)",
            [
                (
                    f"{goal_id}.{version}.{s.id}",
                    goal_id,
                    version,
                    s.id,
                    s.tool,
                    Jsonb(s.arguments),
                    s.depends_on,
                    pools[s.tool],
                    f"{goal_id}:{s.id}",
                )
                for s in steps
            ],
        )


def dispatch(
    conn: Connection, goal_id: str, task: TaskRow, arguments: dict[str, Any], feedback: str | None
) -> int:
    """Move ``task`` to its next attempt; returns the attempt number."""
    attempt = task.attempt + 1
    conn.execute(
        "update tasks set status = 'dispatched', attempt = %s where task_id = %s",
        (attempt, task.task_id),
    )
    conn.execute(
        "insert into attempts (task_id, attempt, status, arguments, message) "
        "values (%s, %s, 'dispatched', %s, %s)",
        (task.task_id, attempt, Jsonb(arguments), feedback),
    )
    if task.kind == "action":  # the step budget counts work, not the rollback of it
        conn.execute(
            "update goals set steps_used = steps_used + 1 where goal_id = %s",
            (goal_id,),
        )
    return attempt


def record_outcome(conn: Connection, event: ev.TaskCompleted | ev.TaskFailed) -> bool:
    """Store a worker's outcome if it answers the task's current attempt; False otherwise."""
    completed = isinstance(event, ev.TaskCompleted)
    row = conn.execute(
        "update tasks set status = 'evaluating', "
        "first_started_at = coalesce(first_started_at, %s) "
        "where task_id = %s and attempt = %s and status = 'dispatched' returning task_id",
        (event.started_at, event.task_id, event.attempt),
    ).fetchone()
    conn.execute(
        "update attempts set status = %s, worker_id = %s, started_at = %s, finished_at = %s, "
        "category = %s, message = coalesce(%s, message), result = %s, input_tokens = %s, "
        "output_tokens = %s, cost_usd = %s "
        "where task_id = %s and attempt = %s and status = 'dispatched'",
        (
            "completed" if completed else "failed",
            event.worker_id,
            event.started_at,
            event.finished_at,
            None if completed else event.category,  # type: ignore[union-attr]
            None if completed else event.message,  # type: ignore[union-attr]
            Jsonb(event.result if completed else event.details),  # type: ignore[union-attr]
            event.usage.input_tokens,
            event.usage.output_tokens,
            event.usage.cost_usd,
            event.task_id,
            event.attempt,
        ),
    )
    return row is not None


def record_verdict(conn: Connection, event: ev.TaskEvaluated) -> TaskRow | None:
    """Store a verdict on the task's current attempt; the task, or None for a stale verdict."""
    inserted = conn.execute(
        "insert into verdicts (task_id, attempt, decision, confidence, reason, feedback, "
        "input_tokens, output_tokens, cost_usd) "
        "select %s, %s, %s, %s, %s, %s, %s, %s, %s where exists "
        "(select 1 from attempts where task_id = %s and attempt = %s) "
        "on conflict do nothing returning task_id",
        (
            event.task_id,
            event.attempt,
            event.decision,
            event.confidence,
            event.reason,
            event.feedback,
            event.usage.input_tokens,
            event.usage.output_tokens,
            event.usage.cost_usd,
            event.task_id,
            event.attempt,
        ),
    ).fetchone()
    if inserted is None:
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"select {_TASK_COLUMNS} from tasks where task_id = %s and attempt = %s "  # noqa: S608
            "and status = 'evaluating' for update",
            (event.task_id, event.attempt),
        ).fetchone()
    return _task(row) if row else None


def succeed(conn: Connection, task: TaskRow, finished_at: datetime) -> TaskRow:
    """Mark the task done with the result of its current attempt."""
    row = conn.execute(
        "update tasks t set status = 'succeeded', finished_at = %s, result = a.result "
        "from attempts a where t.task_id = %s and a.task_id = t.task_id and a.attempt = t.attempt "
        "returning t.result",
        (finished_at, task.task_id),
    ).fetchone()
    result = row[0] if row else {}
    return TaskRow(**(task.__dict__ | {"status": "succeeded", "result": result}))


def fail_task(conn: Connection, task: TaskRow, finished_at: datetime) -> None:
    conn.execute(
        "update tasks set status = 'failed', finished_at = %s where task_id = %s",
        (finished_at, task.task_id),
    )


def add_usage(conn: Connection, goal_id: str, source: str, usage: ev.Usage) -> None:
    """Charge tokens and cost to the goal (and keep the line item)."""
    if not (usage.input_tokens or usage.output_tokens or usage.cost_usd):
        return
    conn.execute(
        "update goals set input_tokens = input_tokens + %s, output_tokens = output_tokens + %s, "
        "cost_usd = cost_usd + %s where goal_id = %s",
        (usage.input_tokens, usage.output_tokens, usage.cost_usd, goal_id),
    )
    conn.execute(
        "insert into usage_log (goal_id, source, input_tokens, output_tokens, cost_usd) "
        "values (%s, %s, %s, %s, %s)",
        (goal_id, source, usage.input_tokens, usage.output_tokens, usage.cost_usd),
    )


def finish_goal(
    conn: Connection,
    goal_id: str,
    *,
    status: str,
    summary: str,
    category: str | None = None,
    message: str | None = None,
    output: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "update goals set status = %s, summary = %s, error_category = %s, error_message = %s, "
        "output = %s, finished_at = now() where goal_id = %s",
        (
            status,
            summary,
            category,
            message,
            Jsonb(output) if output is not None else None,
            goal_id,
        ),
    )
    conn.execute(
        "update tasks set status = 'cancelled' where goal_id = %s "
        "and status in ('pending', 'dispatched', 'evaluating', 'waiting_retry', 'waiting_human')",
        (goal_id,),
    )


def usage_of(conn: Connection, goal_id: str) -> tuple[ev.Usage, int, float]:
    """The goal's total usage, steps used, and seconds since submission."""
    row = conn.execute(
        "select input_tokens, output_tokens, cost_usd, steps_used, "
        "extract(epoch from now() - submitted_at) from goals where goal_id = %s",
        (goal_id,),
    ).fetchone()
    assert row is not None
    usage = ev.Usage(input_tokens=row[0], output_tokens=row[1], cost_usd=row[2])
    return usage, int(row[3]), float(row[4])


def set_task(conn: Connection, task: TaskRow, status: str, **columns: Any) -> None:
    """Move a task to ``status`` (and set extra columns), conditional on its current attempt."""
    sets = ", ".join(f"{name} = %s" for name in columns)
    conn.execute(
        f"update tasks set status = %s{', ' + sets if sets else ''} "  # noqa: S608 - names are ours
        "where task_id = %s and attempt = %s",
        (status, *columns.values(), task.task_id, task.attempt),
    )


def set_goal(
    conn: Connection, goal_id: str, status: str, ending: dict[str, Any] | None = None
) -> None:
    conn.execute(
        "update goals set status = %s, ending = coalesce(%s, ending) where goal_id = %s",
        (status, Jsonb(ending) if ending is not None else None, goal_id),
    )


def last_attempt(conn: Connection, task: TaskRow) -> dict[str, Any]:
    """The current attempt's row: arguments, status, category, message, result."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "select arguments, status, category, message, result from attempts "
            "where task_id = %s and attempt = %s",
            (task.task_id, task.attempt),
        ).fetchone()
    return row or {
        "arguments": {},
        "status": None,
        "category": None,
        "message": None,
        "result": None,
    }


def history_of(conn: Connection, goal_id: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The goal's failures as (category, message) and its verdict decisions, oldest first."""
    failures = conn.execute(
        "select a.category, coalesce(a.message, '') from attempts a join tasks t using (task_id) "
        "where t.goal_id = %s and a.status = 'failed' order by a.finished_at, a.attempt",
        (goal_id,),
    ).fetchall()
    decisions = conn.execute(
        "select v.decision from verdicts v join tasks t using (task_id) "
        "where t.goal_id = %s order by v.created_at",
        (goal_id,),
    ).fetchall()
    return [(str(c), str(m)) for c, m in failures], [str(d[0]) for d in decisions]


def insert_compensations(
    conn: Connection, goal: GoalRow, chain: list[tuple[TaskRow, str, dict[str, Any], str]]
) -> None:
    """Compensation tasks as a chain, each waiting for the one before it: (step, tool, args,
    pool), first to last."""
    rows = []
    previous: str | None = None
    for step, tool, arguments, pool in chain:
        step_id = f"undo_{step.step_id}"
        rows.append(
            (
                f"{goal.goal_id}.{goal.plan_version}.{step_id}",
                goal.goal_id,
                goal.plan_version,
                step_id,
                tool,
                Jsonb(arguments),
                [previous] if previous else [],
                pool,
                f"{step.idempotency_key}:compensate",
                step.task_id,
            )
        )
        previous = step_id
    with conn.cursor() as cur:
        cur.executemany(
            "insert into tasks (task_id, goal_id, plan_version, step_id, tool, arguments, "
            "depends_on, pool, status, kind, idempotency_key, compensates) "
            "values (%s, %s, %s, %s, %s, %s, %s, %s, 'pending', 'compensation', %s, %s) "
            "on conflict do nothing",
            rows,
        )


def schedule(
    conn: Connection,
    goal_id: str,
    kind: str,
    due_at: datetime,
    *,
    task_id: str | None = None,
    escalation_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    """A durable timer: it fires at (never before) ``due_at``, whatever restarts in between."""
    conn.execute(
        "insert into timers (goal_id, kind, task_id, escalation_id, due_at, payload) "
        "values (%s, %s, %s, %s, %s, %s)",
        (goal_id, kind, task_id, escalation_id, due_at, Jsonb(payload or {})),
    )


def due_timers(conn: Connection, mesh: str, limit: int = 200) -> list[dict[str, Any]]:
    """Timers of ``mesh``'s goals whose time has come, locked for this transaction (other
    planners skip them)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "select t.timer_id, t.goal_id, t.kind, t.task_id, t.escalation_id, t.payload "
            "from timers t join goals g using (goal_id) "
            "where t.fired_at is null and t.due_at <= now() and g.mesh = %s "
            "order by t.goal_id, t.due_at limit %s for update of t skip locked",
            (mesh, limit),
        ).fetchall()
        if rows:
            cur.execute(
                "update timers set fired_at = now() where timer_id = any(%s)",
                ([r["timer_id"] for r in rows],),
            )
    return rows


def insert_escalation(
    conn: Connection,
    *,
    escalation: ev.EscalationRaised,
) -> None:
    conn.execute(
        "insert into escalations (escalation_id, goal_id, task_id, reason, evidence, options, "
        "default_action, expires_at) values (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            escalation.escalation_id,
            escalation.goal_id,
            escalation.task_id,
            escalation.reason,
            Jsonb(escalation.evidence),
            escalation.options,
            escalation.default_action,
            escalation.expires_at,
        ),
    )


def close_escalation(
    conn: Connection,
    escalation_id: str,
    *,
    status: str,
    action: str,
    values: dict[str, Any],
    by: str,
) -> dict[str, Any] | None:
    """Close an open escalation (compare-and-set); its row, or None if it was not open."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "update escalations set status = %s, action = %s, values = %s, resolved_by = %s, "
            "resolved_at = now() where escalation_id = %s and status = 'open' "
            "returning escalation_id, goal_id, task_id, default_action",
            (status, action, Jsonb(values), by, escalation_id),
        ).fetchone()


def replace_arguments(conn: Connection, task: TaskRow, values: dict[str, Any]) -> TaskRow:
    merged = task.arguments | values
    conn.execute(
        "update tasks set arguments = %s where task_id = %s", (Jsonb(merged), task.task_id)
    )
    return TaskRow(**(task.__dict__ | {"arguments": merged}))


def count_replan(conn: Connection, goal_id: str) -> None:
    conn.execute("update goals set replans = replans + 1 where goal_id = %s", (goal_id,))


def supersede(conn: Connection, goal_id: str, plan_version: int) -> None:
    """Retire the unfinished tasks of an old plan version (a re-plan replaces them)."""
    conn.execute(
        "update tasks set status = 'superseded' where goal_id = %s and plan_version = %s "
        "and status not in ('succeeded', 'compensated')",
        (goal_id, plan_version),
    )


def carry_over(conn: Connection, goal_id: str, old: int, new: int) -> list[str]:
    """Steps of the new plan that the old one already completed keep their results."""
    rows = conn.execute(
        "update tasks n set status = 'succeeded', result = o.result, attempt = o.attempt, "
        "first_started_at = o.first_started_at, finished_at = o.finished_at "
        "from tasks o where n.goal_id = %s and n.plan_version = %s and o.goal_id = n.goal_id "
        "and o.plan_version = %s and o.step_id = n.step_id and o.tool = n.tool "
        "and o.status = 'succeeded' and o.kind = 'action' and n.kind = 'action' "
        "returning n.step_id",
        (goal_id, new, old),
    ).fetchall()
    return [str(r[0]) for r in rows]


def open_escalations(conn: Connection, goal_id: str) -> int:
    row = conn.execute(
        "select count(*) from escalations where goal_id = %s and status = 'open'", (goal_id,)
    ).fetchone()
    return int(row[0]) if row else 0


def drop_escalations(conn: Connection, goal_id: str) -> None:
    """Open questions of a goal that is ending are moot: close them."""
    conn.execute(
        "update escalations set status = 'expired', action = 'superseded', resolved_at = now() "
        "where goal_id = %s and status = 'open'",
        (goal_id,),
    )


def cancel_waiting_actions(conn: Connection, goal_id: str) -> None:
    """Action steps not started (or waiting to start again) will not run: the goal is ending.
    Steps in flight are left to finish, so their effects are known before the rollback."""
    conn.execute(
        "update tasks set status = 'cancelled' where goal_id = %s and kind = 'action' and status "
        "in ('pending', 'waiting_retry', 'waiting_human')",
        (goal_id,),
    )


def compensation_started(conn: Connection, goal_id: str) -> bool:
    row = conn.execute(
        "select exists (select 1 from tasks where goal_id = %s and kind = 'compensation')",
        (goal_id,),
    ).fetchone()
    return bool(row and row[0])


def requeue(conn: Connection, task: TaskRow) -> None:
    """A step that may not start yet goes back to pending (a retry keeps its attempt count)."""
    conn.execute(
        "update tasks set status = 'pending' where task_id = %s and status in "
        "('pending', 'waiting_retry')",
        (task.task_id,),
    )
