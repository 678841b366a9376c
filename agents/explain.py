"""``mesh trace GOAL``: a goal's decision tree from the ledger — plan versions, each step's
attempts with their outcome, every verdict with its confidence and reason, escalations and their
answers, tokens and cost."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from agents.runtime.settings import MeshSettings

Row = dict[str, Any]


def decision_tree(settings: MeshSettings, goal_id: str) -> list[str]:
    """The lines of the tree; empty when the ledger has no such goal."""
    url = settings.database_url.get_secret_value()
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
        goal = conn.execute(
            "select status, text, summary, steps_used, input_tokens + output_tokens as tokens, "
            "cost_usd from goals where goal_id = %s",
            (goal_id,),
        ).fetchone()
        if goal is None:
            return []
        lines = [
            f"goal {goal_id} [{goal['status']}] {goal['text']!r}",
            f"  {goal['summary'] or ''}".rstrip(),
            f"  steps {goal['steps_used']}, tokens {goal['tokens']}, cost ${goal['cost_usd']:.4f}",
        ]
        for plan in _rows(
            conn,
            "select version, engine, reason from plans where goal_id = %s order by version",
            goal_id,
        ):
            lines += _plan(conn, goal_id, plan)
        for esc in _rows(
            conn,
            "select escalation_id, reason, status, action, resolved_by "
            "from escalations where goal_id = %s order by created_at",
            goal_id,
        ):
            answer = f" -> {esc['action']} by {esc['resolved_by']}" if esc["action"] else ""
            lines.append(
                f"  escalation {esc['escalation_id']} [{esc['status']}]{answer}: {esc['reason']}"
            )
    return [line for line in lines if line.strip()]


def _rows(conn: psycopg.Connection[Row], sql: str, goal_id: str) -> list[Row]:
    return conn.execute(sql.encode(), (goal_id,)).fetchall()


def _plan(conn: psycopg.Connection[Row], goal_id: str, plan: Row) -> list[str]:
    why = f" ({plan['reason']})" if plan["reason"] else ""
    lines = [f"  plan v{plan['version']} by {plan['engine']}{why}"]
    tasks = conn.execute(
        "select task_id, step_id, tool, kind, status from tasks where goal_id = %s "
        "and plan_version = %s order by kind, first_started_at nulls last, step_id",
        (goal_id, plan["version"]),
    ).fetchall()
    for task in tasks:
        undo = " (compensation)" if task["kind"] == "compensation" else ""
        lines.append(f"    {task['step_id']} [{task['tool']}]{undo}: {task['status']}")
        lines += _attempts(conn, task["task_id"])
    return lines


def _attempts(conn: psycopg.Connection[Row], task_id: str) -> list[str]:
    rows = conn.execute(
        "select a.attempt, a.status, a.category, a.message, a.input_tokens + a.output_tokens "
        "as tokens, a.cost_usd, v.decision, v.confidence, v.reason from attempts a "
        "left join verdicts v on v.task_id = a.task_id and v.attempt = a.attempt "
        "where a.task_id = %s order by a.attempt",
        (task_id,),
    ).fetchall()
    lines = []
    for a in rows:
        failure = f" {a['category']}: {a['message']}" if a["category"] else ""
        lines.append(f"      attempt {a['attempt']}: {a['status']}{failure}")
        if a["decision"]:
            lines.append(f"        verdict {a['decision']} ({a['confidence']:.2f}): {a['reason']}")
    return lines
