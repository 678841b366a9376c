"""Connections to the ledger: a pool that fails fast with the fix named, migrations applied."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator, MutableMapping, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from agents import jsontext
from agents.ledger.migrate import migrate
from agents.runtime.errors import ConfigError
from agents.runtime.services import check_postgres
from agents.runtime.settings import MeshSettings

# The planner reads every task's arguments and outcome back in each batch's snapshot, and writes
# plans, arguments and results as JSON columns.
set_json_loads(jsontext.loads)
set_json_dumps(jsontext.dumps)

REPLANS = (1.0, 64.0)  # seconds: until the first fresh connections, and the longest wait after


def open_pool(
    settings: MeshSettings,
    *,
    max_size: int = 4,
    run_migrations: bool = True,
    autocommit: bool = False,
    replans: tuple[float, float] = REPLANS,
) -> ConnectionPool:
    """A ready connection pool on the ledger; migrations applied first unless told otherwise.
    Its connections are replaced at doubling intervals (``replans``: see ``replan_delays``)."""
    if not 0 < replans[0] <= replans[1]:
        raise ValueError(f"replans={replans!r}: want 0 < first <= longest")
    check_postgres(settings)
    url = settings.database_url.get_secret_value()
    if run_migrations:
        migrate(url)
    pool: ConnectionPool = ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": autocommit},
        configure=_generic_plans,
        name="ledger",
    )
    try:
        pool.open(wait=True, timeout=settings.connect_timeout_s)
    except PoolTimeout as exc:
        raise ConfigError(f"could not open the ledger pool: {exc}") from exc
    threading.Thread(
        target=_replan, args=(weakref.ref(pool), *replans), name="ledger-replans", daemon=True
    ).start()
    return pool


def replan_delays(first_s: float, most_s: float) -> Iterator[float]:
    """The waits between fresh sets of connections: ``first_s``, then twice that, and so on up
    to ``most_s``, then ``most_s`` for ever.

    Each connection plans a prepared statement once (``_generic_plans``), for the tables as
    they are then. A plan made while a table was near empty (a new ledger, or one just emptied)
    scans that table in every batch and goes on doing so as the table grows, until an
    autoanalyze replans it, which under load came a minute or more later: Postgres spent
    500-1,800 µs per chain task that way against 160-300. With fresh connections after twice
    the time each time, a plan is not made on a table much smaller than the one it runs on while
    the table grows at a steady rate; a fresh connection costs a few milliseconds."""
    delay = first_s
    while delay < most_s:
        yield delay
        delay *= 2
    yield from repeat(most_s)


def _replan(pool: weakref.ref[ConnectionPool], first_s: float, most_s: float) -> None:
    """Replace the pool's connections on ``replan_delays``' schedule until it closes."""
    for delay in replan_delays(first_s, most_s):
        time.sleep(delay)
        live = pool()
        if live is None or live.closed:
            return
        live.drain()
        del live  # the pool is not kept alive by this thread while it waits


Connection = psycopg.Connection[Any]


def _generic_plans(conn: Connection) -> None:
    """Plan each prepared statement once. psycopg prepares a statement run five times on a
    connection, but under Postgres's default ``plan_cache_mode`` the ledger's statements (array
    parameters, joins of three or four tables) got a fresh custom plan on every run, 295 of 295
    times: planning the evaluator's context read took 1.3 ms, running it 0.27."""
    conn.execute("set plan_cache_mode = force_generic_plan")
    if not conn.autocommit:
        conn.commit()


def columns(rows: Sequence[Any], *fields: str) -> tuple[list[Any], ...]:
    """The named attributes of ``rows``, one list per field (a dotted name reaches into a nested
    object): the arrays a set-wise ``unnest(%b::type[], ...)`` statement takes. They go as
    ``%b``, in binary: psycopg quotes the elements of a text array in Python, about 1.4 µs an
    element against 0.2 (float lists stay ``%s``: binary refuses a list mixing ints and floats)."""
    return tuple([get(row) for row in rows] for get in map(attrgetter, fields))


K = TypeVar("K")
V = TypeVar("V")


def remember(known: MutableMapping[K, V], key: K, value: V, *, most: int) -> None:
    """Keep ``value`` of something the ledger fixes once written (a goal's text and input),
    forgetting the oldest entry once ``most`` are kept."""
    if key not in known and len(known) >= most:
        del known[next(iter(known))]
    known[key] = value
