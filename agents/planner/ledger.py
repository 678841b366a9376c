"""The planner's ledger queries. Every change to a task is a compare-and-set on its attempt, so a
late or repeated result can never overwrite a newer state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from agents import events as ev
from agents.engines.base import Planned, PlanStep
from agents.ledger.db import Connection, columns
from agents.planner.decide import FIELDS, GoalRow, TaskRow, row_of

GOAL_COLUMNS = (
    "goal_id, text, input, status, max_steps, max_tokens, budget_usd, deadline_at, plan_version, "
    "steps_used, input_tokens + output_tokens as tokens, cost_usd, submitted_at, max_replans, "
    "replans, compensation_policy, ending, input_tokens, output_tokens, revision"
)
# In ``GoalRow``'s own order, which ``goal_from`` relies on.
assert [c.split()[-1] for c in GOAL_COLUMNS.split(", ")] == list(FIELDS[GoalRow])
Outcome = ev.TaskCompleted | ev.TaskFailed
_USAGE = ("usage.input_tokens", "usage.output_tokens", "usage.cost_usd")

# In the dataclass's own order, which ``task_from`` relies on.
_TASK_FIELDS = FIELDS[TaskRow]


def task_columns(alias: str = "") -> str:
    """The columns a ``TaskRow`` is read from (qualified by ``alias`` for joins)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + name for name in _TASK_FIELDS)


_TASK_COLUMNS = task_columns()


def insert_goal(
    conn: Connection,
    goal: ev.GoalSubmitted,
    trace_parent: str | None,
    mesh: str,
    *,
    known_new: bool = False,
) -> bool:
    """Record a new goal; False when it is already known (a repeated submission). ``known_new``:
    the caller knows it is not, so the answer is not waited for."""
    inserted = conn.execute(
        _INSERT_GOAL, _goal_values(goal, trace_parent, mesh) | {"input": Jsonb(goal.input)}
    )
    return known_new or inserted.fetchone() is not None


FIRST_PLAN = 1  # a goal's first plan version (a goal not planned yet is at 0)
# The columns a goal is stored with when it is taken in, with their types (the others start at
# their defaults).
_GOAL_TYPES = (
    "goal_id text, text text, input jsonb, status text, plan_version int, max_steps int, "
    "max_tokens bigint, budget_usd float8, deadline_at timestamptz, confidence_threshold float8, "
    "submitted_by text, trace_parent text, submitted_at timestamptz, max_replans int, "
    "compensation_policy text, mesh text, kept_by text"
)
_GOAL_INSERTED = ", ".join(column.split()[0] for column in _GOAL_TYPES.split(", "))
_INSERT_GOAL = (
    f"insert into goals ({_GOAL_INSERTED}) "  # noqa: S608 (constant columns)
    f"values ({', '.join(f'%({c})s' for c in _GOAL_INSERTED.split(', '))}) "
    "on conflict (goal_id) do nothing returning goal_id"
)


def _goal_values(
    goal: ev.GoalSubmitted,
    trace_parent: str | None,
    mesh: str,
    *,
    planned: bool = False,
    kept_by: str | None = None,
) -> dict[str, Any]:
    """The values of ``_GOAL_INSERTED``: a goal about to be planned, or one ``planned``
    already, whose first plan is stored with it."""
    return {
        "goal_id": goal.goal_id,
        "text": goal.text,
        "input": goal.input,
        "status": "running" if planned else "planning",
        "plan_version": FIRST_PLAN if planned else 0,
        "max_steps": goal.max_steps,
        "max_tokens": goal.max_tokens,
        "budget_usd": goal.budget_usd,
        "deadline_at": goal.deadline_at,
        "confidence_threshold": goal.confidence_threshold,
        "submitted_by": goal.submitted_by,
        "trace_parent": trace_parent,
        "submitted_at": goal.envelope.occurred_at,
        "max_replans": goal.max_replans,
        "compensation_policy": goal.compensation_policy,
        "mesh": mesh,
        "kept_by": kept_by,
    }


@dataclass(frozen=True)
class Intake:
    """A goal the ledger has not seen, planned already: stored with its first plan and its
    tasks by ``take_in``."""

    goal: ev.GoalSubmitted
    trace_parent: str | None
    mesh: str
    kept_by: str | None
    planned: Planned
    tasks: list[TaskRow]


def take_in(conn: Connection, intakes: Sequence[Intake]) -> None:
    """Store new goals with their first plans and tasks, one statement however many there are
    (a statement costs the planner 30-70 µs of psycopg's Python however few rows it carries).
    A goal stored meanwhile by another planner makes the statement fail, and with it the batch,
    which is then applied record by record, where that goal is a repeated submission."""
    goals, plans, tasks = [], [], []
    for i in intakes:
        goal_id = i.goal.goal_id
        goals.append(_goal_values(i.goal, i.trace_parent, i.mesh, planned=True, kept_by=i.kept_by))
        plans.append(_plan_document(goal_id, FIRST_PLAN, i.planned, ""))
        tasks += _task_documents(goal_id, FIRST_PLAN, i.tasks)
    conn.execute(
        f"with goal as (insert into goals ({_GOAL_INSERTED}) "  # noqa: S608 (constant columns)
        f"select * from jsonb_to_recordset(%(goals)s) as v({_GOAL_TYPES})), "
        f"plan as ({_PLANS}) {_TASKS}",
        {"goals": Jsonb(goals), "plans": Jsonb(plans), "tasks": Jsonb(tasks)},
    )


def goal_row(goal: ev.GoalSubmitted) -> GoalRow:
    """A new goal's row as ``insert_goal`` stores it, not planned yet, without reading it
    back."""
    return GoalRow(
        goal_id=goal.goal_id,
        text=goal.text,
        input=goal.input,
        status="planning",
        max_steps=goal.max_steps,
        max_tokens=goal.max_tokens,
        budget_usd=goal.budget_usd,
        deadline_at=goal.deadline_at,
        plan_version=0,
        steps_used=0,
        tokens=0,
        cost_usd=0.0,
        submitted_at=goal.envelope.occurred_at,
        max_replans=goal.max_replans,
        compensation_policy=goal.compensation_policy,
    )


def keep_plans(conn: Connection, goal_ids: Sequence[str], owner: str) -> None:
    """From now on, the planner ``owner`` keeps these goals' plans in memory (``Kept``)."""
    conn.execute("update goals set kept_by = %s where goal_id = any(%b)", (owner, list(goal_ids)))


def lock_goal(conn: Connection, goal_id: str) -> GoalRow | None:
    """The goal's row, locked until the transaction ends (planners serialise on it), its
    revision counting this transaction (``Kept``)."""
    row = conn.execute(
        "update goals set revision = revision + 1 where goal_id = %s "  # noqa: S608
        f"returning {GOAL_COLUMNS}",  # constant columns
        (goal_id,),
    ).fetchone()
    return goal_from(row) if row else None


def goal_from(values: Sequence[Any]) -> GoalRow:
    """A ``GoalRow`` from the columns of ``GOAL_COLUMNS``, in their order: a batch's snapshot
    reads a row for every goal it is about, and a tuple row costs less than a dict unpacked into
    a frozen dataclass's ``__init__`` (twenty fields set one by one)."""
    return row_of(GoalRow, values)


def tasks_of(
    conn: Connection, goal_id: str, plan_version: int, kind: str = "action"
) -> list[TaskRow]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"select {_TASK_COLUMNS} from tasks where goal_id = %s and plan_version = %s "  # noqa: S608
            "and kind = %s order by task_id",
            (goal_id, plan_version, kind),
        ).fetchall()
    return [task_row(r) for r in rows]


def task(conn: Connection, task_id: str) -> TaskRow | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"select {_TASK_COLUMNS} from tasks where task_id = %s for update",  # noqa: S608
            (task_id,),
        ).fetchone()
    return task_row(row) if row else None


def task_row(row: dict[str, Any]) -> TaskRow:
    return task_from([row[name] for name in _TASK_FIELDS])


_DEPENDS_ON = _TASK_FIELDS.index("depends_on")


def task_from(values: Sequence[Any]) -> TaskRow:
    """A ``TaskRow`` from the columns of ``task_columns``, in their order: the snapshot reads
    thousands of rows a second, and a tuple row costs less than a dict merged and unpacked."""
    fields = list(values)
    fields[_DEPENDS_ON] = tuple(fields[_DEPENDS_ON])
    return row_of(TaskRow, fields)


_NEW_TASK_FIELDS = ("task_id", "step_id", "tool", "pool", "status", "idempotency_key")
# Plans and their tasks go in as JSON documents (``_plan_document``, ``_task_documents``), each
# naming its goal and version: psycopg inspects every element of an array parameter to choose
# its type, which for eight arrays cost more than the rest of the statement.
_PLANS = (
    "insert into plans (goal_id, version, engine, rationale, steps, reason) "
    "select * from jsonb_to_recordset(%(plans)s) as v(goal_id text, version int, engine text, "
    "rationale text, steps jsonb, reason text)"
)
_TASKS = (
    "insert into tasks (task_id, goal_id, plan_version, step_id, tool, arguments, depends_on, "
    "pool, status, idempotency_key) "
    "select * from jsonb_to_recordset(%(tasks)s) as v(task_id text, goal_id text, "
    "plan_version int, step_id text, tool text, arguments jsonb, depends_on text[], pool text, "
    "status text, idempotency_key text)"
)


def insert_plan(
    conn: Connection, goal: GoalRow, planned: Planned, pools: dict[str, str], reason: str = ""
) -> list[TaskRow]:
    """Store a new plan version and its tasks; returns the tasks as stored."""
    version = goal.plan_version + 1
    tasks = new_tasks(goal.goal_id, version, planned, pools)
    # One statement for the plan, its tasks and the goal's new version: storing a plan as a
    # statement per table and an insert per task took three times as long as making it.
    conn.execute(
        f"with plan as ({_PLANS}), new_tasks as ({_TASKS}) "  # noqa: S608 (constant parts)
        "update goals set plan_version = %(version)s, status = 'running' "
        "where goal_id = %(goal)s",
        {
            "goal": goal.goal_id,
            "version": version,
            "plans": Jsonb([_plan_document(goal.goal_id, version, planned, reason)]),
            "tasks": Jsonb(_task_documents(goal.goal_id, version, tasks)),
        },
    )
    return tasks


def new_tasks(goal_id: str, version: int, planned: Planned, pools: dict[str, str]) -> list[TaskRow]:
    """The tasks of a plan version about to be stored."""
    return [_new_task(goal_id, version, s, pools[s.tool]) for s in planned.draft.steps]


def _plan_document(goal_id: str, version: int, planned: Planned, reason: str) -> dict[str, Any]:
    return {
        "goal_id": goal_id,
        "version": version,
        "engine": planned.engine,
        "rationale": planned.draft.rationale,
        "steps": [s.model_dump() for s in planned.draft.steps],
        "reason": reason,
    }


def _task_documents(goal_id: str, version: int, tasks: list[TaskRow]) -> list[dict[str, Any]]:
    return [
        {name: getattr(task, name) for name in _NEW_TASK_FIELDS}
        | {
            "goal_id": goal_id,
            "plan_version": version,
            "arguments": task.arguments,
            "depends_on": list(task.depends_on),
        }
        for task in tasks
    ]


def _new_task(goal_id: str, version: int, step: PlanStep, pool: str) -> TaskRow:
    return TaskRow(
        task_id=f"{goal_id}.{version}.{step.id}",
        step_id=step.id,
        tool=step.tool,
        arguments=step.arguments,
        depends_on=tuple(step.depends_on),
        pool=pool,
        status="pending",
        attempt=0,
        idempotency_key=f"{goal_id}:{step.id}",
        result=None,
    )


def dispatch(
    conn: Connection, goal_id: str, task: TaskRow, arguments: dict[str, Any], feedback: str | None
) -> int:
    """Move ``task`` to its next attempt; returns the attempt number."""
    attempt = task.attempt + 1
    dispatch_all(conn, [Dispatch(goal_id, task, attempt, arguments, feedback)])
    return attempt


@dataclass(frozen=True)
class Dispatch:
    """A task moving to its next attempt, with that attempt's arguments and feedback."""

    goal_id: str
    task: TaskRow
    attempt: int
    arguments: dict[str, Any]
    feedback: str | None


def dispatch_all(conn: Connection, dispatches: Sequence[Dispatch]) -> None:
    """Record dispatches, three statements however many there are."""
    conn.execute(
        "update tasks t set status = 'dispatched', attempt = v.attempt "
        "from unnest(%b::text[], %b::int[]) as v(task_id, attempt) where t.task_id = v.task_id",
        columns(dispatches, "task.task_id", "attempt"),
    )
    conn.execute(
        "insert into attempts (task_id, attempt, status, arguments, message) "
        "select v.task_id, v.attempt, 'dispatched', v.arguments, v.message "
        "from unnest(%b::text[], %b::int[], %b::jsonb[], %b::text[]) "
        "as v(task_id, attempt, arguments, message)",
        (
            *columns(dispatches, "task.task_id", "attempt"),
            [Jsonb(d.arguments) for d in dispatches],
            *columns(dispatches, "feedback"),
        ),
    )
    # The step budget counts work, not the rollback of it.
    counted = [d.goal_id for d in dispatches if d.task.kind == "action"]
    if counted:
        conn.execute(
            "update goals g set steps_used = steps_used + v.n from "
            "(select goal_id, count(*) as n from unnest(%b::text[]) as goal_id group by goal_id) v "
            "where g.goal_id = v.goal_id",
            (counted,),
        )


def record_outcome(conn: Connection, event: Outcome) -> bool:
    """Store a worker's outcome if it answers the task's current attempt; False otherwise.
    The one write to a goal's tasks made without first locking the goal, so it counts a
    revision of its own (``Kept``); even a refused outcome may fill in its attempt's row."""
    conn.execute("update goals set revision = revision + 1 where goal_id = %s", (event.goal_id,))
    return record_outcomes(conn, [event]).fetchone() is not None


def record_outcomes(conn: Connection, events: Sequence[Outcome]) -> psycopg.Cursor[Any]:
    """Store outcomes that answer their tasks' current attempts (compare-and-set); the cursor
    returns the task ids that did."""
    updated = mark_evaluating(conn, events)
    record_attempts(conn, events)
    return updated


def mark_evaluating(conn: Connection, events: Sequence[Outcome]) -> psycopg.Cursor[Any]:
    """Tasks whose current attempt these outcomes answer now wait for their verdicts; the cursor
    returns their ids."""
    return conn.execute(
        "update tasks t set status = 'evaluating', "
        "first_started_at = coalesce(t.first_started_at, v.started_at) "
        "from unnest(%b::text[], %b::int[], %b::timestamptz[]) as v(task_id, attempt, started_at) "
        "where t.task_id = v.task_id and t.attempt = v.attempt and t.status = 'dispatched' "
        "returning t.task_id",
        columns(events, "task_id", "attempt", "started_at"),
    )


def record_attempts(conn: Connection, events: Sequence[Outcome]) -> None:
    """The outcomes on their attempts' rows (an attempt takes one outcome: the first)."""
    completed = [isinstance(e, ev.TaskCompleted) for e in events]
    conn.execute(
        "update attempts a set status = v.status, worker_id = v.worker_id, "
        "started_at = v.started_at, finished_at = v.finished_at, category = v.category, "
        "message = coalesce(v.message, a.message), result = v.result, "
        "input_tokens = v.input_tokens, output_tokens = v.output_tokens, cost_usd = v.cost_usd "
        "from unnest(%b::text[], %b::int[], %b::text[], %b::text[], %b::timestamptz[], "
        "%b::timestamptz[], %b::text[], %b::text[], %b::jsonb[], %b::bigint[], %b::bigint[], "
        "%s::float8[]) as v(task_id, attempt, status, worker_id, started_at, finished_at, "
        "category, message, result, input_tokens, output_tokens, cost_usd) "
        "where a.task_id = v.task_id and a.attempt = v.attempt and a.status = 'dispatched'",
        (
            *columns(events, "task_id", "attempt"),
            ["completed" if done else "failed" for done in completed],
            *columns(events, "worker_id", "started_at", "finished_at"),
            [None if isinstance(e, ev.TaskCompleted) else e.category for e in events],
            [None if isinstance(e, ev.TaskCompleted) else e.message for e in events],
            [Jsonb(outcome_of(e)) for e in events],
            *columns(events, *_USAGE),
        ),
    )


def outcome_of(event: Outcome) -> dict[str, Any]:
    """What the ledger keeps of an outcome: the result, or the failure's details."""
    return event.result if isinstance(event, ev.TaskCompleted) else event.details


def record_verdict(conn: Connection, event: ev.TaskEvaluated) -> TaskRow | None:
    """Store a verdict on the task's current attempt; the task, or None for a stale verdict."""
    if insert_verdicts(conn, [event]).fetchone() is None:
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"select {_TASK_COLUMNS} from tasks where task_id = %s and attempt = %s "  # noqa: S608
            "and status = 'evaluating' for update",
            (event.task_id, event.attempt),
        ).fetchone()
    return task_row(row) if row else None


def insert_verdicts(conn: Connection, events: Sequence[ev.TaskEvaluated]) -> psycopg.Cursor[Any]:
    """Insert verdicts on attempts that exist and have none yet; the cursor returns the task ids
    that got one."""
    return conn.execute(
        "insert into verdicts (task_id, attempt, decision, confidence, reason, feedback, "
        "input_tokens, output_tokens, cost_usd) "
        "select v.* from unnest(%b::text[], %b::int[], %b::text[], %s::float8[], %b::text[], "
        "%b::text[], %b::bigint[], %b::bigint[], %s::float8[]) as v(task_id, attempt, decision, "
        "confidence, reason, feedback, input_tokens, output_tokens, cost_usd) "
        "where exists (select 1 from attempts a where a.task_id = v.task_id "
        "and a.attempt = v.attempt) on conflict do nothing returning task_id",
        columns(
            events, "task_id", "attempt", "decision", "confidence", "reason", "feedback", *_USAGE
        ),
    )


def succeed(conn: Connection, task: TaskRow, finished_at: datetime) -> TaskRow:
    """Mark the task done with the result of its current attempt."""
    row = succeed_all(conn, [task.task_id], finished_at).fetchone()
    result = row[1] if row else {}
    return TaskRow(**(task.__dict__ | {"status": "succeeded", "result": result}))


def succeed_all(
    conn: Connection, task_ids: Sequence[str], finished_at: datetime
) -> psycopg.Cursor[Any]:
    """Mark tasks done with the results of their current attempts; the cursor returns
    (task id, result) of each."""
    return conn.execute(
        "update tasks t set status = 'succeeded', finished_at = %s, result = a.result, "
        "first_started_at = coalesce(t.first_started_at, a.started_at) "
        "from attempts a where t.task_id = any(%b) and a.task_id = t.task_id "
        "and a.attempt = t.attempt returning t.task_id, t.result",
        (finished_at, list(task_ids)),
    )


def fail_task(conn: Connection, task: TaskRow, finished_at: datetime) -> None:
    conn.execute(
        "update tasks set status = 'failed', finished_at = %s where task_id = %s",
        (finished_at, task.task_id),
    )


@dataclass(frozen=True)
class Charge:
    """Tokens and cost charged to a goal, and what spent them (``source``)."""

    goal_id: str
    source: str
    usage: ev.Usage


def add_usage(conn: Connection, goal_id: str, source: str, usage: ev.Usage) -> None:
    """Charge tokens and cost to the goal (and keep the line item)."""
    add_usages(conn, [Charge(goal_id, source, usage)])


def add_usages(conn: Connection, charges: Sequence[Charge]) -> None:
    """Charge each goal the sum of its charges, two statements however many there are, and keep
    every line item. The sums go per goal: an update changes a row once per statement."""
    spent = [c for c in charges if c.usage.spent]
    if not spent:
        return
    totals: dict[str, list[Any]] = {}
    for c in spent:
        total = totals.setdefault(c.goal_id, [0, 0, 0.0])
        total[0] += c.usage.input_tokens
        total[1] += c.usage.output_tokens
        total[2] += c.usage.cost_usd
    ins, outs, costs = (list(column) for column in zip(*totals.values(), strict=True))
    conn.execute(
        "update goals g set input_tokens = g.input_tokens + v.i, "
        "output_tokens = g.output_tokens + v.o, cost_usd = g.cost_usd + v.cost "
        "from unnest(%b::text[], %b::bigint[], %b::bigint[], %s::float8[]) "
        "as v(goal_id, i, o, cost) where g.goal_id = v.goal_id",
        (list(totals), ins, outs, costs),
    )
    conn.execute(
        "insert into usage_log (goal_id, source, input_tokens, output_tokens, cost_usd) "
        "select * from unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %s::float8[])",
        columns(spent, "goal_id", "source", *_USAGE),
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
    finish_goals(conn, [Finish(goal_id, status, summary, category, message, output)])


@dataclass(frozen=True)
class Finish:
    """A goal's end: its status, summary, and (when it failed) why, or (when it completed) its
    output."""

    goal_id: str
    status: str
    summary: str
    category: str | None = None
    message: str | None = None
    output: dict[str, Any] | None = None


def finish_goals(conn: Connection, finishes: Sequence[Finish]) -> None:
    """End goals; their steps that had not finished will not."""
    ids, *ends = columns(finishes, "goal_id", "status", "summary", "category", "message")
    conn.execute(
        "update goals g set status = v.status, summary = v.summary, error_category = v.category, "
        "error_message = v.message, output = v.output, finished_at = now() "
        "from unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::jsonb[]) "
        "as v(goal_id, status, summary, category, message, output) where g.goal_id = v.goal_id",
        (ids, *ends, [Jsonb(f.output) if f.output is not None else None for f in finishes]),
    )
    conn.execute(
        "update tasks set status = 'cancelled' where goal_id = any(%b) "
        "and status in ('pending', 'dispatched', 'evaluating', 'waiting_retry', 'waiting_human')",
        (ids,),
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
    mesh: str,
    task_id: str | None = None,
    escalation_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    """A durable timer: it fires at (never before) ``due_at``, whatever restarts in between,
    by a planner of ``mesh`` (the goal's)."""
    conn.execute(
        "insert into timers (goal_id, kind, task_id, escalation_id, due_at, payload, mesh) "
        "values (%s, %s, %s, %s, %s, %s, %s)",
        (goal_id, kind, task_id, escalation_id, due_at, Jsonb(payload or {}), mesh),
    )


_DUE = "t.mesh = %s and t.fired_at is null and t.due_at <= now()"


def any_timer_due(conn: Connection, mesh: str) -> psycopg.Cursor[Any]:
    """Whether a timer of ``mesh``'s goals has come due: the cursor's one row says (in pipeline
    mode the answer comes with the next round trip)."""
    return conn.execute(
        f"select exists (select 1 from timers t where {_DUE})",  # noqa: S608
        (mesh,),
    )


def due_timers(conn: Connection, mesh: str, limit: int = 200) -> list[dict[str, Any]]:
    """Timers of ``mesh``'s goals whose time has come, locked for this transaction (other
    planners skip them)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "select t.timer_id, t.goal_id, t.kind, t.task_id, t.escalation_id, t.payload, "  # noqa: S608
            "g.trace_parent "
            f"from timers t join goals g using (goal_id) where {_DUE} "
            "order by t.goal_id, t.due_at limit %s for update of t skip locked",
            (mesh, limit),
        ).fetchall()
        if rows:
            cur.execute(
                "update timers set fired_at = now() where timer_id = any(%b)",
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
