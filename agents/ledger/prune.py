"""Bounded growth of the ledger: ended goals leave it, with everything hanging off them.

``prune`` (``mesh ledger prune --older-than DAYS``) deletes goals of one mesh that ended
(completed, failed or cancelled) more than ``DAYS`` ago, a chunk at a time so no transaction holds
the tables for long: their plans, tasks, attempts, verdicts, escalations, usage and timers go with
them (the schema cascades), and so do the effect memos and fences their tools keyed by the goal
(``<goal>:<step>:...``). Goals still running or waiting for a human are never touched. What the
tools made in their own systems (organisations, billing accounts, emails) is theirs to keep.

``forget_seen`` and ``forget_fired_timers`` are the planner's own housekeeping, on its own
schedule: inbox entries older than any topic keeps an event, and timers that fired over an hour
ago.
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


def forget_seen(pool: ConnectionPool, *, older_than_s: float, limit: int = 10_000) -> int:
    """Delete inbox rows older than ``older_than_s`` (at most ``limit``); returns how many. Call it
    with the longest retention of the topics the inbox guards: an event older than that is gone
    from the log and cannot be delivered again."""
    return _forget_older(pool, "inbox", "seen_at", older_than_s, limit)


def forget_fired_timers(pool: ConnectionPool, *, older_than_s: float, limit: int = 10_000) -> int:
    """Delete timers that fired more than ``older_than_s`` ago (at most ``limit``)."""
    return _forget_older(pool, "timers", "fired_at", older_than_s, limit)


def _forget_older(
    pool: ConnectionPool, table: str, stamp: str, older_than_s: float, limit: int
) -> int:
    """Delete at most ``limit`` rows of ``table`` whose ``stamp`` is older than ``older_than_s``,
    so one call never holds the table for long; returns how many."""
    with pool.connection() as conn, conn.transaction():
        cursor = conn.execute(
            f"delete from {table} where ctid = any(array(select ctid from {table} "  # noqa: S608
            f"where {stamp} < now() - make_interval(secs => %s) limit %s))",
            (older_than_s, limit),
        )
        return cursor.rowcount
