"""Where a tool's effect happens: a transaction that holds the effect's fence.

A fence makes a superseded attempt harmless. Every attempt carries a fencing token
(``ToolContext.fence``: the planner's ``action_fence`` for an action, ``COMPENSATION_FENCE`` for a
compensation), and ``effect_fences`` keeps the highest token seen per effect key and per step.
``fenced`` claims the step and the key for the call's token in the transaction the effect is made
in: a lower token than either's is refused with ``SupersededError`` before anything is done, and
the claimed rows stay locked until the transaction ends. So a compensation claiming a key waits
for an effect in flight under it and then undoes it, and an attempt arriving after the
compensation's claim is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import PoolTimeout

from agents.tools.base import SupersededError, ToolContext, TransientToolError, fenced_keys

_CLAIM = (
    "insert into effect_fences (idempotency_key, token) values (%s, %s) "
    "on conflict (idempotency_key) do update set token = excluded.token, updated_at = now() "
    "where effect_fences.token <= excluded.token returning token"
)


@contextmanager
def transaction(ctx: ToolContext) -> Iterator[psycopg.Connection[TupleRow]]:
    """A pooled connection in a transaction; an unreachable database is worth a retry."""
    try:
        with ctx.resources.db.connection() as conn:
            yield conn
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise TransientToolError(f"the effect database is unreachable: {exc}") from exc


@contextmanager
def fenced(ctx: ToolContext) -> Iterator[psycopg.Connection[TupleRow]]:
    """A transaction holding the fence of the call's effect (its ``undoes`` key for a
    compensation, else its own key) for as long as the effect is being made.

    Raises ``SupersededError`` when a newer attempt or a compensation holds the key. An unfenced
    call (``fence`` 0, from an older planner) claims nothing.
    """
    with transaction(ctx) as conn:
        if ctx.fence > 0:
            for key in fenced_keys(ctx.undoes or ctx.idempotency_key):  # the same order always
                _claim(conn, key, ctx.fence)
        yield conn


def _claim(conn: psycopg.Connection[TupleRow], key: str, token: int) -> None:
    """Raise the fence of ``key`` to ``token`` in ``conn``'s transaction, or refuse a lower one."""
    if conn.execute(_CLAIM, (key, token)).fetchone() is None:
        raise SupersededError(
            f"a newer attempt or a compensation owns effect {key}; this attempt did nothing",
            details={"idempotency_key": key, "fence": token},
        )
