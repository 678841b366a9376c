"""The ledger sink on real Postgres and Kafka: inbox de-duplication, outbox relay and sweep,
and a refused goal that ends as failed instead of hanging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from agents import events as ev
from agents.engines.offline import OfflineEngine
from agents.enums import TimerKind
from agents.ledger.db import Connection, open_pool
from agents.ledger.outbox import LedgerSink, store, sweep
from agents.ledger.prune import forget_seen
from agents.planner import repository
from agents.planner.agent import Planner
from agents.planner.changes import TimerSet
from agents.planner.main import INBOX_CHUNK, INBOX_KEEP_S, next_inbox_look
from agents.runtime.consumer import ConsumerRuntime, Delivery
from agents.runtime.publisher import Publisher
from agents.runtime.settings import MeshSettings
from agents.tools.catalogue import default_registry
from schemas.codec import Codec
from tests.kafka_support import read_all
from tests.mesh_support import ledger_rows, stored
from tests.support import assert_eventually, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def pool(mesh_settings: MeshSettings) -> Iterator[ConnectionPool]:
    db = open_pool(mesh_settings)
    yield db
    db.close()


@pytest.fixture
def publisher(mesh_settings: MeshSettings) -> Iterator[Publisher]:
    pub = Publisher(settings=mesh_settings, codec=Codec(), client_id="test-ledger")
    yield pub
    pub.close()


def consume(
    settings: MeshSettings,
    publisher: Publisher,
    sink: LedgerSink,
    done: Any,
    roles: tuple[str, ...] = ("goals",),
) -> None:
    runtime = ConsumerRuntime(
        settings=settings,
        codec=Codec(),
        publisher=publisher,
        group_id=unique("g-"),
        roles=roles,
        sink=sink,
        client_id="test-ledger",
    )
    try:
        assert_eventually(lambda: runtime.poll_batch(0.2) >= 0 and done(), timeout=30)
    finally:
        runtime.close()


def test_a_redelivered_event_changes_nothing_the_second_time(
    mesh_settings: MeshSettings, pool: ConnectionPool, publisher: Publisher
) -> None:
    calls: list[str] = []

    def handle(event: ev.GoalCancelled, delivery: Delivery, conn: Connection) -> list[ev.Event]:
        calls.append(event.event_id)
        return [
            ev.GoalFailed(envelope=ev.Envelope(goal_id=event.goal_id), category="x", message="y")
        ]

    sink = LedgerSink(pool=pool, consumer=unique("c-"), handlers={ev.GoalCancelled: handle})
    cancel = ev.GoalCancelled(envelope=ev.Envelope(goal_id=unique("goal-")))
    publisher.publish(cancel)
    publisher.publish(cancel)  # the same event id again, as a redelivery would bring it
    publisher.flush()
    consume(mesh_settings, publisher, sink, lambda: len(read_all(mesh_settings, "results")) >= 1)
    assert calls == [cancel.event_id]
    results = read_all(mesh_settings, "results")
    assert len(results) == 1
    sink.settle()  # idle, so deleted now (a busy sink deletes them in its next batch)
    pending = ledger_rows(
        mesh_settings,
        "select count(*) from outbox where topic like %s",
        (f"{mesh_settings.topic_prefix}%",),
    )
    assert pending == [(0,)]  # relayed, then deleted


def test_a_busy_sink_deletes_what_it_relayed_in_its_next_batch(
    mesh_settings: MeshSettings, pool: ConnectionPool, publisher: Publisher
) -> None:
    def handle(event: ev.GoalCancelled, delivery: Delivery, conn: Connection) -> list[ev.Event]:
        return [
            ev.GoalFailed(envelope=ev.Envelope(goal_id=event.goal_id), category="x", message="y")
        ]

    def outbox_rows() -> list[tuple[Any, ...]]:
        return ledger_rows(
            mesh_settings,
            "select key from outbox where topic like %s order by id",
            (f"{mesh_settings.topic_prefix}%",),
        )

    sink = LedgerSink(pool=pool, consumer=unique("c-"), handlers={ev.GoalCancelled: handle})
    runtime = ConsumerRuntime(
        settings=mesh_settings,
        codec=Codec(),
        publisher=publisher,
        group_id=unique("g-"),
        roles=("goals",),
        sink=sink,
        client_id="test-ledger",
    )
    try:
        for n, goal_id in enumerate([unique("goal-") for _ in range(2)], start=1):
            publisher.publish(ev.GoalCancelled(envelope=ev.Envelope(goal_id=goal_id)))
            publisher.flush()

            def relayed(n: int = n) -> bool:
                return runtime.poll_batch(0.2) >= 0 and len(read_all(mesh_settings, "results")) >= n

            assert_eventually(relayed, timeout=30)
            # A batch's records are relayed after its commit; their rows go in the next batch.
            assert outbox_rows() == [(goal_id.encode(),)]
    finally:
        runtime.close()  # idle: deleted now
    assert outbox_rows() == []


def test_the_sweeper_sends_what_a_dead_writer_left_in_the_outbox(
    mesh_settings: MeshSettings, pool: ConnectionPool, publisher: Publisher
) -> None:
    event = ev.GoalFailed(envelope=ev.Envelope(goal_id=unique("goal-")), category="c", message="m")
    with pool.connection() as conn, conn.transaction():
        store(conn, [publisher.prepare(event)])  # committed, never relayed
    assert read_all(mesh_settings, "results") == []
    assert_eventually(lambda: sweep(pool, publisher, older_than_s=0) >= 1 or None, timeout=10)
    (record,) = read_all(mesh_settings, "results")
    assert Codec().decode(record.value()) == event
    assert sweep(pool, publisher, older_than_s=0) == 0


def test_a_goal_the_planner_cannot_handle_fails_instead_of_hanging(
    mesh_settings: MeshSettings, pool: ConnectionPool, publisher: Publisher
) -> None:
    planner = Planner(engine=OfflineEngine(), registry=default_registry())

    def broken(event: ev.GoalSubmitted, delivery: Delivery, conn: Connection) -> list[ev.Event]:
        raise RuntimeError("a bug in the planner")

    sink = LedgerSink(
        pool=pool,
        consumer=unique("c-"),
        handlers={ev.GoalSubmitted: broken},
        on_refused=planner.on_refused,
    )
    goal = ev.GoalSubmitted(envelope=ev.Envelope(goal_id=unique("goal-")), text="anything")
    publisher.publish(goal)
    publisher.flush()
    consume(mesh_settings, publisher, sink, lambda: read_all(mesh_settings, "deadletters"))
    status = ledger_rows(
        mesh_settings,
        "select status, error_category from goals where goal_id = %s",
        (goal.goal_id,),
    )
    assert status == [("failed", "internal_error")]
    (failed,) = [Codec().decode(m.value()) for m in read_all(mesh_settings, "results")]
    assert isinstance(failed, ev.GoalFailed) and failed.goal_id == goal.goal_id
    (letter,) = [Codec().decode(m.value()) for m in read_all(mesh_settings, "deadletters")]
    assert isinstance(letter, ev.DeadLetter) and letter.category == "handler_error"


def test_a_planner_fires_only_the_timers_of_its_own_mesh(pool: ConnectionPool) -> None:
    """Meshes with other topic prefixes may share the ledger; their timers are not ours."""
    goal = ev.GoalSubmitted(envelope=ev.Envelope(goal_id=unique("goal-")), text="scoped")
    ours, theirs = unique("mesh-a."), unique("mesh-b.")
    timer = TimerSet(goal.goal_id, TimerKind.RETRY, ev.now(), "t", payload={"attempt": 1})
    with pool.connection() as conn, conn.transaction():
        repository.write(conn, [stored(goal), timer], mesh=ours)
    with pool.connection() as conn, conn.transaction():
        assert conn.execute(repository.ANY_DUE, (theirs,)).fetchone() == (False,)
        assert conn.execute(repository.ANY_DUE, (ours,)).fetchone() == (True,)
        assert repository.take_due_timers(conn, theirs) == []
    with pool.connection() as conn, conn.transaction():
        assert [t["goal_id"] for t in repository.take_due_timers(conn, ours)] == [goal.goal_id]


def test_the_inbox_forgets_events_no_topic_can_deliver_again(pool: ConnectionPool) -> None:
    consumer = unique("c-")
    old, recent = [unique("old-") for _ in range(3)], unique("recent-")
    with pool.connection() as conn, conn.transaction():
        conn.execute(
            "insert into inbox (consumer, event_id, seen_at) "
            "select %s, unnest(%s::text[]), now() - interval '100 days'",
            (consumer, old),
        )
        conn.execute("insert into inbox (consumer, event_id) values (%s, %s)", (consumer, recent))

    def left() -> list[str]:
        with pool.connection() as conn:
            rows = conn.execute(
                "select event_id from inbox where consumer = %s order by event_id", (consumer,)
            ).fetchall()
        return [r[0] for r in rows]

    assert INBOX_KEEP_S == 90 * 24 * 3600  # the escalations topic keeps events longest
    assert forget_seen(pool, older_than_s=INBOX_KEEP_S, limit=2) == 2  # a bounded delete
    while forget_seen(pool, older_than_s=INBOX_KEEP_S):
        pass
    assert left() == [recent]


def test_the_inbox_is_looked_at_again_soon_while_a_look_finds_a_full_chunk() -> None:
    assert next_inbox_look(100.0, INBOX_CHUNK) == 101.0
    assert next_inbox_look(100.0, INBOX_CHUNK - 1) == 160.0
    assert next_inbox_look(100.0, 0) == 160.0
