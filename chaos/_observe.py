"""What a chaos run reads: the goals' state in the ledger, their effects in the onboarding tables
and the sandbox, and their terminal events on the run's own results topic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from psycopg import sql

from agents import events as ev
from agents.runtime.errors import PoisonRecord
from agents.runtime.kafka import client_config, watermarks
from agents.runtime.settings import MeshSettings
from chaos._scenarios import Effect
from chaos._verdict import EffectRows
from schemas.codec import Codec
from topics.catalogue import RESULTS

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class LedgerGoal:
    """A goal's row as the harness steers by it."""

    status: str
    compensation_policy: str
    done_steps: frozenset[str]  # the current plan's succeeded action steps


def ledger_goals(conn: Conn, goal_ids: Sequence[str]) -> dict[str, LedgerGoal]:
    """The goals the planner has taken in, by id (those it has not are absent)."""
    rows = conn.execute(
        "select g.goal_id, g.status, g.compensation_policy, "
        "coalesce(array_agg(t.step_id) filter (where t.step_id is not null), '{}') "
        "from goals g left join tasks t on t.goal_id = g.goal_id "
        "and t.plan_version = g.plan_version and t.kind = 'action' and t.status = 'succeeded' "
        "where g.goal_id = any(%s) group by g.goal_id",
        (list(goal_ids),),
    ).fetchall()
    return {r[0]: LedgerGoal(r[1], r[2], frozenset(r[3])) for r in rows}


@dataclass(frozen=True)
class OpenEscalation:
    escalation_id: str
    goal_id: str
    step_id: str | None


def open_escalations(conn: Conn, goal_ids: Sequence[str]) -> list[OpenEscalation]:
    rows = conn.execute(
        "select e.escalation_id, e.goal_id, t.step_id from escalations e "
        "left join tasks t using (task_id) where e.goal_id = any(%s) and e.status = 'open' "
        "order by e.created_at",
        (list(goal_ids),),
    ).fetchall()
    return [OpenEscalation(*r) for r in rows]


def outbox_backlog(conn: Conn, topic_prefix: str) -> int:
    """Events of this mesh committed to the ledger but not yet relayed to Kafka."""
    row = conn.execute(
        "select count(*) from outbox where starts_with(topic, %s)", (topic_prefix,)
    ).fetchone()
    return int(row[0]) if row else 0


# --- effects -----------------------------------------------------------------------------------

# Each onboarding table and the column that marks its row undone.
_TABLES: Mapping[Effect, tuple[str, str]] = {
    Effect.ORGANISATION: ("onboarding_organisations", "deleted_at"),
    Effect.BILLING: ("onboarding_billing_accounts", "cancelled_at"),
    Effect.EMAIL: ("onboarding_emails", "retracted_at"),
    Effect.CHANNEL: ("onboarding_channel_messages", "retracted_at"),
}

# Rows per idempotency key, for the keys of the given goals (a key is "<goal>:<step>").
_PER_KEY = sql.SQL(
    "select split_part(idempotency_key, ':', 1), count(*), count(*) filter (where {} is null) "
    "from {} where split_part(idempotency_key, ':', 1) = any(%s) group by idempotency_key"
)


def effect_rows(conn: Conn, goal_ids: Sequence[str]) -> dict[str, dict[Effect, EffectRows]]:
    """Each goal's rows in each onboarding table, found by the goal id its keys begin with."""
    found: dict[str, dict[Effect, EffectRows]] = {}
    for kind, (table, undone) in _TABLES.items():
        query = _PER_KEY.format(sql.Identifier(undone), sql.Identifier(table))
        keys = conn.execute(query, (list(goal_ids),)).fetchall()
        for goal_id, rows in _per_goal(keys).items():
            found.setdefault(goal_id, {})[kind] = rows
    return found


def _per_goal(keys: Iterable[tuple[Any, ...]]) -> dict[str, EffectRows]:
    """Add up (goal, rows, live rows) per key into one ``EffectRows`` per goal."""
    totals: dict[str, EffectRows] = {}
    for goal_id, rows, live in keys:
        before = totals.get(goal_id, EffectRows())
        totals[goal_id] = EffectRows(
            rows=before.rows + rows,
            live=before.live + live,
            most_per_key=max(before.most_per_key, rows),
        )
    return totals


def tenant_components(sandbox: Path, slug: str) -> int:
    """How many component manifests the tenant folder holds (temporary files do not count)."""
    folder = sandbox / "tenants" / slug
    return (
        sum(1 for p in folder.glob("*.json") if not p.name.startswith("."))
        if folder.is_dir()
        else 0
    )


# --- the results topic -------------------------------------------------------------------------


class ResultsLog:
    """Follows the run's results topic from its beginning and keeps each goal's terminal events,
    one per event id (a relay may send an event twice; the id says it is the same one)."""

    def __init__(self, settings: MeshSettings) -> None:
        self._topic = RESULTS.name(settings.topic_prefix)
        self._codec = Codec()
        self._consumer = Consumer(
            client_config(settings, client_id="chaos-results")
            | {"group.id": f"chaos-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
        partitions = range(RESULTS.partitions)
        self._consumer.assign(
            [TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions]
        )
        self._seen: dict[str, dict[str, str]] = {}  # goal -> event id -> end

    def __enter__(self) -> ResultsLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._consumer.close()

    def drain(self, wait: float = 0.0, most: int = 2000) -> None:
        """Take in what has arrived, waiting up to ``wait`` seconds for it."""
        for message in self._consumer.consume(most, wait):
            if message.error() is None:
                self._take(message.value())

    def read_to_end(self, timeout: float = 30.0) -> bool:
        """Take in everything the topic holds now; False if that took longer than ``timeout``."""
        marks = {p: watermarks(self._consumer, self._topic, p) for p in range(RESULTS.partitions)}
        unread = {p: high for p, (low, high) in marks.items() if high > low}
        deadline = time.monotonic() + timeout
        while unread and time.monotonic() < deadline:
            self.drain(wait=0.1)
            positions = self._consumer.position([TopicPartition(self._topic, p) for p in unread])
            for tp in positions:
                if tp.offset >= unread[tp.partition]:
                    del unread[tp.partition]
        return not unread

    def ends(self, goal_id: str) -> tuple[str, ...]:
        """The goal's terminal events (completed, failed or cancelled), one per event id."""
        return tuple(sorted(self._seen.get(goal_id, {}).values()))

    def _take(self, value: bytes | None) -> None:
        try:
            event = self._codec.decode(value)
        except PoisonRecord:
            return  # the dead-letter topic holds these; they are no goal's end
        end = _end_of(event)
        if end is not None:
            self._seen.setdefault(event.goal_id, {})[event.event_id] = end


def _end_of(event: ev.Event) -> str | None:
    if isinstance(event, ev.GoalCompleted):
        return "completed"
    if isinstance(event, ev.GoalFailed):
        return "cancelled" if event.category == "cancelled" else "failed"
    return None
