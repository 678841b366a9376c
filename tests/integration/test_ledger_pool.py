"""The ledger pool on real Postgres: its connections are replaced on a schedule, so a statement
planned while a table was empty is planned again once the table has grown."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

import psycopg
import pytest

from agents.ledger.db import Connection, open_pool, replan_delays
from agents.runtime.settings import MeshSettings
from tests.support import assert_eventually, unique

pytestmark = pytest.mark.integration

ROWS = 20_000


@pytest.fixture
def table(stack_settings: MeshSettings) -> Iterator[str]:
    name = unique("replan_")
    url = stack_settings.database_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn:
        # No autovacuum: an autoanalyze of its own would replan it in the middle of the test.
        conn.execute(
            f"create table {name} (id text primary key, v int) with (autovacuum_enabled = false)"
        )
        # Vacuumed while empty, as autovacuum leaves a ledger's tables once their rows are gone
        # (a table never vacuumed is assumed to hold a few pages, and gets an index plan).
        conn.execute(f"vacuum {name}")
    yield name
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"drop table {name}")


def _lookup(conn: Connection, table: str) -> Any:
    """A key lookup run often enough for psycopg to prepare it (a generic plan, once)."""
    for _ in range(6):
        conn.execute(f"select v from {table} where id = any(%b)", (["k1", "k2"],)).fetchall()
    return conn.execute(
        "select name from pg_prepared_statements where statement like %s", (f"%from {table} %",)
    ).fetchone()


def _plan(conn: Connection, table: str) -> str:
    """The plan the connection's prepared lookup runs with, as Postgres's JSON."""
    name = _lookup(conn, table)
    assert name is not None, "the lookup was not prepared"
    row = conn.execute(f"explain (format json) execute {name[0]}('{{k1,k2}}')").fetchone()
    assert row is not None
    return str(row[0])


def _grow(conn: Connection, table: str) -> None:
    conn.execute(f"insert into {table} select 'k' || n, n from generate_series(1, {ROWS}) as n")
    conn.commit()


def test_a_plan_made_on_an_empty_table_is_made_again_on_a_fresh_connection(
    stack_settings: MeshSettings, table: str
) -> None:
    pool = open_pool(stack_settings, replans=(0.3, 0.3))
    try:
        with pool.connection() as conn:
            first = conn.info.backend_pid
            assert "Seq Scan" in _plan(conn, table)  # planned on the empty table
            _grow(conn, table)
            assert "Seq Scan" in _plan(conn, table)  # and kept, however the table grew

        def fresh() -> str | None:
            with pool.connection() as conn:
                return _plan(conn, table) if conn.info.backend_pid != first else None

        plan = assert_eventually(fresh, timeout=10, what="a fresh connection from the pool")
        assert "Index Scan" in plan and "Seq Scan" not in plan
    finally:
        pool.close()


def test_connections_are_replaced_after_doubling_waits() -> None:
    assert list(islice(replan_delays(1.0, 64.0), 9)) == [1, 2, 4, 8, 16, 32, 64, 64, 64]
    assert list(islice(replan_delays(5.0, 5.0), 3)) == [5, 5, 5]
    assert list(islice(replan_delays(1.0, 3.0), 4)) == [1, 2, 3, 3]


def test_a_schedule_that_cannot_run_is_refused(stack_settings: MeshSettings) -> None:
    with pytest.raises(ValueError, match="want 0 < first <= longest"):
        open_pool(stack_settings, replans=(0.0, 64.0))
    with pytest.raises(ValueError, match="want 0 < first <= longest"):
        open_pool(stack_settings, replans=(10.0, 1.0))
