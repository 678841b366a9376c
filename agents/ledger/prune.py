"""Bounded growth of the ledger: ended goals leave it, with everything hanging off them.

``prune`` (``mesh ledger prune --older-than DAYS``) deletes goals of one mesh that ended
(completed, failed or cancelled) more than ``DAYS`` ago, a chunk at a time so no transaction holds
the tables for long: their plans, tasks, attempts, verdicts, escalations, usage and timers go with
them (the schema cascades), and so do the effect memos and fences their tools keyed by the goal
(``<goal>:<step>:...``). Goals still running or waiting for a human are never touched. What the
tools made in their own systems (organisations, billing accounts, emails) is theirs to keep.

``forget_fired_timers`` is the planner's own housekeeping: a fired timer is history once it has
fired, and the planner removes those older than an hour on its own schedule.
"""

from __future__ import annotations

from psycopg_pool import ConnectionPool

ENDED = ("completed", "failed", "cancelled")
CHUNK = 1000  # goals deleted per transaction


def prune(pool: ConnectionPool, *, mesh: str, older_than_days: float, chunk: int = CHUNK) -> int:
    """Delete the ended goals of ``mesh`` older than ``older_than_days``; returns how many."""
    pruned = 0
    while True:
        with pool.connection() as conn, conn.transaction():
            ids = [
                row[0]
                for row in conn.execute(
                    "select goal_id from goals where mesh = %s and status = any(%s) "
                    "and finished_at < now() - make_interval(secs => %s) "
                    "order by finished_at limit %s for update skip locked",
                    (mesh, list(ENDED), older_than_days * 86_400, chunk),
                )
            ]
            if not ids:
                return pruned
            # Keys are ``<goal>:<step>:<digest>`` (agents/planner/keys.py); a goal id holding a
            # colon keeps its memos, which is the safe way to be wrong.
            for table in ("tool_effects", "effect_fences"):
                conn.execute(
                    f"delete from {table} where split_part(idempotency_key, ':', 1) = any(%s)",  # noqa: S608
                    (ids,),
                )
            conn.execute("delete from goals where goal_id = any(%s)", (ids,))
            pruned += len(ids)


def forget_fired_timers(pool: ConnectionPool, *, older_than_s: float, limit: int = 10_000) -> int:
    """Delete timers that fired more than ``older_than_s`` ago (at most ``limit``)."""
    with pool.connection() as conn, conn.transaction():
        cursor = conn.execute(
            "delete from timers where timer_id = any(array(select timer_id from timers "
            "where fired_at < now() - make_interval(secs => %s) limit %s))",
            (older_than_s, limit),
        )
        return cursor.rowcount
