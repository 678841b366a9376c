"""The planner's ledger: load a batch's goal states in one round trip, write a batch's changes in
bulk.

``load`` locks the goals (in goal order, so planners never deadlock) and reads every task of
every plan version with its current attempt. ``write`` takes the changes the decider returned
for the whole batch and writes each kind with one statement, whatever the number of rows: a
row changed several times in the batch is written once, as it ended up. One path per kind of
row: there is no single-row variant.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from agents import events as ev
from agents import jsontext
from agents.enums import CompensationPolicy, GoalStatus, Outcome, TaskKind, TaskStatus
from agents.ledger.db import Connection
from agents.planner.changes import (
    AttemptPut,
    Change,
    Charged,
    EscalationClosed,
    EscalationOpened,
    GoalPut,
    PlanAdded,
    TaskPut,
    TimerSet,
    VerdictAdded,
)
from agents.planner.state import Attempt, Effect, Ending, Goal, GoalState, Task

_GOAL = (
    "goal_id, status, max_steps, submitted_at, max_tokens, budget_usd, deadline_at, "
    "confidence_threshold, max_replans, compensation_policy, plan_version, steps_used, "
    "input_tokens, output_tokens, cost_usd, replans, ending, failures, since_accept, "
    "escalations, trace_parent, summary, output"
)
_LOCK = (
    f"select {_GOAL}, version from goals where goal_id = any(%s) "  # noqa: S608
    "order by goal_id for update"
)
# The tasks of the goals whose state the caller does not hold at their current version.
_TASKS = (
    "select t.task_id, t.goal_id, t.plan_version, t.step_id, t.tool, t.arguments, t.depends_on, "
    "t.pool, t.kind, t.status, t.attempt, t.attempt_floor, t.infra_losses, t.generation, "
    "t.idempotency_key, t.effects, t.result, t.compensates, t.undoes, "
    "a.attempt, a.idempotency_key, a.fence, a.arguments, a.outcome, a.category, a.message, "
    "a.result, a.feedback "
    "from goals g join tasks t on t.goal_id = g.goal_id "
    "left join attempts a on a.task_id = t.task_id and a.attempt = t.attempt "
    "left join unnest(%s::text[], %s::bigint[]) as k(goal_id, version) on k.goal_id = g.goal_id "
    "where g.goal_id = any(%s) and g.version is distinct from k.version"
)

Versioned = tuple[int, GoalState]
"""A goal's state and the version of the goal's row it is the state of."""


def load(
    conn: Connection, goal_ids: Collection[str], known: Mapping[str, Versioned] | None = None
) -> dict[str, Versioned]:
    """The goals among ``goal_ids`` the ledger holds, locked, with all their tasks: from
    ``known`` for a goal whose version is still the one known, from the ledger otherwise, in
    one round trip."""
    ids = sorted(set(goal_ids))
    if not ids:
        return {}
    known = known or {}
    cached = [g for g in ids if g in known]
    with conn.cursor() as goals, conn.cursor() as tasks:
        goals.execute(_LOCK, (ids,))
        tasks.execute(_TASKS, (cached, [known[g][0] for g in cached], ids))
        rows = goals.fetchall()
        read: dict[str, dict[str, Task]] = {}
        for row in tasks.fetchall():
            read.setdefault(row[1], {})[row[0]] = _task(row)
    states: dict[str, Versioned] = {}
    for row in rows:
        goal_id, version = row[0], row[-1]
        hit = known.get(goal_id)
        tasks_of = hit[1].tasks if hit is not None and hit[0] == version else read.get(goal_id, {})
        states[goal_id] = (version, GoalState(_goal(row[:-1]), tasks_of))
    return states


def _goal(row: Sequence[Any]) -> Goal:
    (goal_id, status, max_steps, submitted_at, max_tokens, budget_usd, deadline_at) = row[:7]
    (threshold, max_replans, policy, version, steps, i_tokens, o_tokens, cost) = row[7:15]
    (replans, ending, failures, since_accept, escalations, trace, summary, output) = row[15:]
    return Goal(
        goal_id=goal_id,
        status=GoalStatus(status),
        max_steps=max_steps,
        submitted_at=submitted_at,
        max_tokens=max_tokens,
        budget_usd=budget_usd,
        deadline_at=deadline_at,
        confidence_threshold=threshold,
        max_replans=max_replans,
        compensation_policy=CompensationPolicy(policy),
        plan_version=version,
        steps_used=steps,
        input_tokens=i_tokens,
        output_tokens=o_tokens,
        cost_usd=cost,
        replans=replans,
        ending=_ending(ending),
        failures=failures or {},
        since_accept=since_accept,
        escalations=escalations or {},
        trace_parent=trace,
        summary=summary,
        output=output,
    )


def _ending(value: Mapping[str, Any] | None) -> Ending | None:
    if not value:
        return None
    return Ending(
        GoalStatus(value["status"]), value["category"], value["message"], value.get("failed")
    )


def _task(row: Sequence[Any]) -> Task:
    (task_id, goal_id, version, step_id, tool, arguments, depends_on, pool, kind) = row[:9]
    (status, attempt, floor, losses, generation, key, effects, result) = row[9:17]
    compensates, undoes = row[17:19]
    return Task(
        task_id=task_id,
        goal_id=goal_id,
        plan_version=version,
        step_id=step_id,
        tool=tool,
        arguments=arguments,
        depends_on=tuple(depends_on),
        pool=pool,
        kind=TaskKind(kind),
        status=TaskStatus(status),
        attempt=attempt,
        floor=floor,
        infra_losses=losses,
        generation=generation,
        key=key,
        effects=tuple(_effect(e) for e in effects),
        result=result,
        compensates=compensates,
        undoes=undoes,
        current=_attempt(row[19:]) if row[19] is not None else None,
    )


def _effect(doc: Mapping[str, Any]) -> Effect:
    return Effect(doc["key"], doc["arguments"], tuple(doc["attempts"]), doc.get("result"))


def _attempt(row: Sequence[Any]) -> Attempt:
    number, key, fence, arguments, outcome, category, message, result, feedback = row
    return Attempt(
        number=number,
        key=key or "",
        fence=fence,
        arguments=arguments,
        outcome=Outcome(outcome) if outcome else None,
        category=category,
        message=message,
        result=result,
        feedback=feedback,
    )


def goal_texts(conn: Connection, goal_id: str) -> tuple[str, dict[str, Any]]:
    """A goal's text and input (read only to plan: the states leave them out)."""
    row = conn.execute("select text, input from goals where goal_id = %s", (goal_id,)).fetchone()
    return (str(row[0]), dict(row[1])) if row else ("", {})


# -- writing ---------------------------------------------------------------------------------------


def write(conn: Connection, changes: Iterable[Change], *, mesh: str) -> None:
    """Write a batch's changes: each kind of row with one statement. Every goal changed is
    among them (``GoalPut``), and its version goes up by one (a new goal's starts at 0)."""
    goals: dict[str, GoalPut] = {}
    tasks: dict[str, TaskPut] = {}
    attempts: dict[tuple[str, int], AttemptPut] = {}
    rest: dict[type[Any], list[Any]] = {}
    for change in changes:
        if isinstance(change, GoalPut):
            _latest(goals, change.goal.goal_id, change)
        elif isinstance(change, TaskPut):
            _latest(tasks, change.task.task_id, change)
        elif isinstance(change, AttemptPut):
            _latest(attempts, (change.task_id, change.attempt.number), change)
        else:
            rest.setdefault(type(change), []).append(change)
    new_goals = [g for g in goals.values() if g.new]
    _run(conn, _INSERT_GOALS, [_goal_doc(g, mesh) for g in new_goals])
    _run(conn, _INSERT_PLANS, [_plan_doc(p) for p in rest.get(PlanAdded, [])])
    _run(conn, _INSERT_TASKS, [_task_doc(t.task) for t in tasks.values() if t.new])
    _run(conn, _INSERT_ATTEMPTS, [_attempt_doc(a) for a in attempts.values() if a.new])
    _run(conn, _UPDATE_GOALS, [_goal_changes(g.goal) for g in goals.values() if not g.new])
    _run(conn, _UPDATE_TASKS, [_task_changes(t.task) for t in tasks.values() if not t.new])
    _run(conn, _UPDATE_ATTEMPTS, [_attempt_outcome(a) for a in attempts.values() if not a.new])
    _write_rest(conn, rest, mesh)


def _write_rest(conn: Connection, rest: Mapping[type[Any], list[Any]], mesh: str) -> None:
    _run(conn, _INSERT_VERDICTS, [_verdict_doc(v) for v in rest.get(VerdictAdded, [])])
    _run(conn, _INSERT_ESCALATIONS, [_escalation_doc(e) for e in rest.get(EscalationOpened, [])])
    _run(conn, _CLOSE_ESCALATIONS, [_closed_doc(e) for e in rest.get(EscalationClosed, [])])
    _run(conn, _INSERT_TIMERS, [_timer_doc(t, mesh) for t in rest.get(TimerSet, [])])
    _run(conn, _INSERT_USAGE, [_usage_doc(c) for c in rest.get(Charged, [])])


def _latest(rows: dict[Any, Any], key: Any, put: Any) -> None:
    """Keep the row's latest value; it is new if any of its puts was (a new goal keeps what
    only its first put carries: text, input, submitter, trace)."""
    earlier = rows.get(key)
    if earlier is not None and earlier.new and not put.new:
        put = (
            replace(earlier, goal=put.goal) if isinstance(put, GoalPut) else replace(put, new=True)
        )
    rows[key] = put


def _run(conn: Connection, statement: str, docs: Sequence[Mapping[str, Any]]) -> None:
    if docs:
        conn.execute(statement, (jsontext.dumps(list(docs)),))


def _names(types: str) -> list[str]:
    """The column names of a recordset's ``name type, ...`` list."""
    return [column.split()[0] for column in types.split(", ")]


def _assign(types: str, keys: int) -> str:
    """``c = v.c`` for each column of ``types`` after its first ``keys`` (the row's key)."""
    return ", ".join(f"{c} = v.{c}" for c in _names(types)[keys:])


def _insert(table: str, types: str, tail: str = "") -> str:
    """An insert of the rows of the statement's one parameter (JSON documents) into ``table``,
    the columns named once, in ``types``."""
    names = ", ".join(_names(types))
    return f"insert into {table} ({names}) {_recordset(types)} {tail}".rstrip()


def _recordset(columns: str) -> str:
    """``select * from`` the JSON documents of the statement's one parameter, typed."""
    return f"select * from jsonb_to_recordset(%s::jsonb) as v({columns})"  # noqa: S608


_GOAL_TYPES = (
    "goal_id text, text text, input jsonb, status text, max_steps int, max_tokens bigint, "
    "budget_usd float8, deadline_at timestamptz, confidence_threshold float8, "
    "submitted_by text, submitted_at timestamptz, max_replans int, compensation_policy text, "
    "mesh text, plan_version int, steps_used int, input_tokens bigint, output_tokens bigint, "
    "cost_usd float8, replans int, ending jsonb, failures jsonb, since_accept int, "
    "escalations jsonb, summary text, output jsonb, error_category text, error_message text, "
    "trace_parent text"
)
_INSERT_GOALS = _insert("goals", _GOAL_TYPES)
# An update sends only what a goal's life changes (an insert sends the rest too).
_GOAL_CHANGES = (
    "goal_id text, status text, plan_version int, steps_used int, input_tokens bigint, "
    "output_tokens bigint, cost_usd float8, replans int, ending jsonb, failures jsonb, "
    "since_accept int, escalations jsonb, summary text, output jsonb, error_category text, "
    "error_message text"
)
_UPDATE_GOALS = (
    "update goals g set version = g.version + 1, "  # noqa: S608 (constant columns)
    + _assign(_GOAL_CHANGES, 1)
    + ", finished_at = case when v.status in ('completed', 'failed', 'cancelled') "
    "then coalesce(g.finished_at, now()) end "
    f"from ({_recordset(_GOAL_CHANGES)}) v where g.goal_id = v.goal_id"
)


def _goal_doc(put: GoalPut, mesh: str) -> dict[str, Any]:
    goal = put.goal
    return _goal_changes(goal) | {
        "text": put.text,
        "input": put.input,
        "max_steps": goal.max_steps,
        "max_tokens": goal.max_tokens,
        "budget_usd": goal.budget_usd,
        "deadline_at": goal.deadline_at,
        "confidence_threshold": goal.confidence_threshold,
        "submitted_by": put.submitted_by,
        "submitted_at": goal.submitted_at,
        "max_replans": goal.max_replans,
        "compensation_policy": goal.compensation_policy,
        "mesh": mesh,
        "trace_parent": put.trace_parent,
    }


def _goal_changes(goal: Goal) -> dict[str, Any]:
    ending = goal.ending
    ended = not goal.status.live and goal.status is not GoalStatus.COMPLETED
    return {
        "goal_id": goal.goal_id,
        "status": goal.status,
        "plan_version": goal.plan_version,
        "steps_used": goal.steps_used,
        "input_tokens": goal.input_tokens,
        "output_tokens": goal.output_tokens,
        "cost_usd": goal.cost_usd,
        "replans": goal.replans,
        "ending": _ending_doc(ending),
        "failures": goal.failures,
        "since_accept": goal.since_accept,
        "escalations": goal.escalations,
        "summary": goal.summary,
        "output": goal.output,
        "error_category": ending.category if ended and ending else None,
        "error_message": ending.message if ended and ending else None,
    }


def _ending_doc(ending: Ending | None) -> dict[str, Any] | None:
    if ending is None:
        return None
    return {
        "status": ending.status,
        "category": ending.category,
        "message": ending.message,
        "failed": ending.failed_step,
    }


_PLAN_TYPES = "goal_id text, version int, engine text, rationale text, steps jsonb, reason text"
_INSERT_PLANS = _insert("plans", _PLAN_TYPES)


def _plan_doc(plan: PlanAdded) -> dict[str, Any]:
    return {
        "goal_id": plan.goal_id,
        "version": plan.version,
        "engine": plan.engine,
        "rationale": plan.rationale,
        "steps": plan.steps,
        "reason": plan.reason,
    }


_TASK_TYPES = (
    "task_id text, goal_id text, plan_version int, step_id text, tool text, arguments jsonb, "
    "depends_on text[], pool text, kind text, status text, attempt int, attempt_floor int, "
    "infra_losses int, generation int, idempotency_key text, effects jsonb, result jsonb, "
    "compensates text, undoes text"
)
_INSERT_TASKS = _insert("tasks", _TASK_TYPES)
_TASK_CHANGES = (
    "task_id text, arguments jsonb, status text, attempt int, attempt_floor int, "
    "infra_losses int, generation int, idempotency_key text, effects jsonb, result jsonb"
)
_UPDATE_TASKS = (
    "update tasks t set "  # noqa: S608 (constant columns)
    + _assign(_TASK_CHANGES, 1)
    + ", finished_at = case when v.status in ('succeeded', 'failed', 'compensated') "
    "then coalesce(t.finished_at, now()) else t.finished_at end "
    f"from ({_recordset(_TASK_CHANGES)}) v where t.task_id = v.task_id"
)


def _task_doc(task: Task) -> dict[str, Any]:
    return _task_changes(task) | {
        "goal_id": task.goal_id,
        "plan_version": task.plan_version,
        "step_id": task.step_id,
        "tool": task.tool,
        "depends_on": list(task.depends_on),
        "pool": task.pool,
        "kind": task.kind,
        "compensates": task.compensates,
        "undoes": task.undoes,
    }


def _task_changes(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "arguments": task.arguments,
        "status": task.status,
        "attempt": task.attempt,
        "attempt_floor": task.floor,
        "infra_losses": task.infra_losses,
        "generation": task.generation,
        "idempotency_key": task.key,
        "effects": [
            {"key": e.key, "arguments": e.arguments, "attempts": e.attempts, "result": e.result}
            for e in task.effects
        ],
        "result": task.result,
    }


_ATTEMPT_TYPES = (
    "task_id text, attempt int, status text, arguments jsonb, idempotency_key text, fence bigint, "
    "outcome text, category text, message text, result jsonb, feedback text, worker_id text, "
    "started_at timestamptz, finished_at timestamptz, input_tokens bigint, "
    "output_tokens bigint, cost_usd float8"
)
_INSERT_ATTEMPTS = _insert("attempts", _ATTEMPT_TYPES)
_ATTEMPT_OUTCOME = (
    "task_id text, attempt int, status text, outcome text, category text, message text, "
    "result jsonb, worker_id text, started_at timestamptz, finished_at timestamptz, "
    "input_tokens bigint, output_tokens bigint, cost_usd float8"
)
_UPDATE_ATTEMPTS = (
    "update attempts a set "  # noqa: S608 (constant columns)
    + _assign(_ATTEMPT_OUTCOME, 2)
    + f" from ({_recordset(_ATTEMPT_OUTCOME)}) v "
    "where a.task_id = v.task_id and a.attempt = v.attempt"
)
_ATTEMPT_STATUS = {
    None: "dispatched",
    Outcome.SUCCEEDED: "completed",
    Outcome.FAILED: "failed",
    Outcome.UNKNOWN: "failed",
}


def _attempt_doc(put: AttemptPut) -> dict[str, Any]:
    attempt = put.attempt
    return _attempt_outcome(put) | {
        "arguments": attempt.arguments,
        "idempotency_key": attempt.key,
        "fence": attempt.fence,
        "feedback": attempt.feedback,
    }


def _attempt_outcome(put: AttemptPut) -> dict[str, Any]:
    attempt = put.attempt
    return {
        "task_id": put.task_id,
        "attempt": attempt.number,
        "status": _ATTEMPT_STATUS[attempt.outcome],
        "outcome": attempt.outcome,
        "category": attempt.category,
        "message": attempt.message,
        "result": attempt.result,
        "worker_id": put.worker_id,
        "started_at": put.started_at,
        "finished_at": put.finished_at,
        **_tokens(put.usage),
    }


_VERDICT_TYPES = (
    "task_id text, attempt int, decision text, confidence float8, reason text, feedback text, "
    "input_tokens bigint, output_tokens bigint, cost_usd float8"
)
_INSERT_VERDICTS = _insert("verdicts", _VERDICT_TYPES, "on conflict do nothing")


def _verdict_doc(added: VerdictAdded) -> dict[str, Any]:
    v = added.verdict
    return {
        "task_id": v.task_id,
        "attempt": v.attempt,
        "decision": v.decision,
        "confidence": v.confidence,
        "reason": v.reason,
        "feedback": v.feedback,
        **_tokens(v.usage),
    }


_ESCALATION_TYPES = (
    "escalation_id text, goal_id text, task_id text, reason text, evidence jsonb, "
    "options text[], default_action text, expires_at timestamptz"
)
_INSERT_ESCALATIONS = _insert("escalations", _ESCALATION_TYPES, "on conflict do nothing")


def _escalation_doc(opened: EscalationOpened) -> dict[str, Any]:
    e = opened.raised
    return {
        "escalation_id": e.escalation_id,
        "goal_id": e.goal_id,
        "task_id": e.task_id,
        "reason": e.reason,
        "evidence": e.evidence,
        "options": e.options,
        "default_action": e.default_action,
        "expires_at": e.expires_at,
    }


_CLOSED_TYPES = "escalation_id text, status text, action text, values jsonb, resolved_by text"
_CLOSE_ESCALATIONS = (
    "update escalations e set status = v.status, action = v.action, values = v.values, "  # noqa: S608
    "resolved_by = v.resolved_by, resolved_at = now() "
    f"from ({_recordset(_CLOSED_TYPES)}) v "
    "where e.escalation_id = v.escalation_id and e.status = 'open'"
)


def _closed_doc(closed: EscalationClosed) -> dict[str, Any]:
    return {
        "escalation_id": closed.escalation_id,
        "status": closed.status,
        "action": closed.action,
        "values": closed.values,
        "resolved_by": closed.by,
    }


_TIMER_TYPES = (
    "goal_id text, kind text, task_id text, escalation_id text, due_at timestamptz, "
    "payload jsonb, mesh text"
)
_INSERT_TIMERS = _insert("timers", _TIMER_TYPES)


def _timer_doc(timer: TimerSet, mesh: str) -> dict[str, Any]:
    return {
        "goal_id": timer.goal_id,
        "kind": timer.kind,
        "task_id": timer.task_id,
        "escalation_id": timer.escalation_id,
        "due_at": timer.due_at,
        "payload": timer.payload,
        "mesh": mesh,
    }


_USAGE_TYPES = (
    "goal_id text, source text, input_tokens bigint, output_tokens bigint, cost_usd float8"
)
_INSERT_USAGE = _insert("usage_log", _USAGE_TYPES)


def _tokens(usage: ev.Usage) -> dict[str, Any]:
    """The usage columns every row that records spending has."""
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost_usd": usage.cost_usd,
    }


def _usage_doc(charge: Charged) -> dict[str, Any]:
    return {
        "goal_id": charge.goal_id,
        "source": charge.source,
        **_tokens(charge.usage),
    }


# -- timers --------------------------------------------------------------------------------------

_DUE = "t.mesh = %s and t.fired_at is null and t.due_at <= now()"


ANY_DUE = f"select exists (select 1 from timers t where {_DUE})"  # noqa: S608
"""Whether a timer of a mesh (the one parameter) has come due."""


def take_due_timers(conn: Connection, mesh: str, limit: int = 200) -> list[dict[str, Any]]:
    """Timers of ``mesh``'s goals whose time has come, marked fired in this transaction (other
    planners skip them while it runs; should it roll back, they come due again)."""
    rows = conn.execute(
        "select t.timer_id, t.goal_id, t.kind, t.task_id, t.escalation_id, t.payload, "  # noqa: S608
        "g.trace_parent from timers t join goals g using (goal_id) "
        f"where {_DUE} order by t.goal_id, t.due_at limit %s for update of t skip locked",
        (mesh, limit),
    ).fetchall()
    if rows:
        conn.execute(
            "update timers set fired_at = now() where timer_id = any(%s)", ([r[0] for r in rows],)
        )
    names = ("timer_id", "goal_id", "kind", "task_id", "escalation_id", "payload", "trace_parent")
    return [dict(zip(names, row, strict=True)) for row in rows]
