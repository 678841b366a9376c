"""Firing the planner's durable timers (retry backoff, escalation expiry).

Timers are ledger rows, so a retry scheduled before every process died still fires after they
restart, and never before its time (``due_at <= now()`` on the database's clock). A waiting retry
holds no worker and blocks no partition: it is just a row. Each due timer is handled in its own
savepoint, and the events it causes go out through the outbox like any other.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any

from psycopg_pool import ConnectionPool

from agents.ledger.outbox import relay, store
from agents.planner import repository
from agents.planner.agent import Planner
from agents.runtime.publisher import Outgoing, Publisher
from agents.runtime.telemetry import extract, tracer

log = logging.getLogger(__name__)


def fire_due(pool: ConnectionPool, publisher: Publisher, planner: Planner) -> int:
    """Handle every timer that has come due; returns how many fired."""
    with pool.connection() as conn, conn.transaction():
        timers = repository.take_due_timers(conn, planner.mesh)
        records: list[Outgoing] = []
        for timer in timers:
            try:
                with conn.transaction(), _timer_span(timer):
                    records += [publisher.prepare(e) for e in planner.on_timer(conn, timer)]
            except Exception as exc:  # one bad timer must not hold the others
                log.exception("timer %s of goal %s failed", timer["timer_id"], timer["goal_id"])
                with conn.transaction():
                    events = planner.on_timer_error(conn, timer["goal_id"], repr(exc))
                    records += [publisher.prepare(e) for e in events]
        sent = store(conn, records)
    relay(pool, publisher, sent)
    return len(timers)


def _timer_span(timer: dict[str, Any]) -> AbstractContextManager[object]:
    """A span in the goal's own trace (its ``traceparent`` from submission), so what a timer
    sends (a retry's dispatch, an escalation's expiry) stays in the goal's one trace."""
    parent = timer.get("trace_parent")
    return tracer.start_as_current_span(
        f"timer {timer['kind']}",
        context=extract([("traceparent", parent)] if parent else []),
        attributes={"mesh.goal_id": timer["goal_id"], "mesh.timer.kind": timer["kind"]},
    )
