"""Bounded growth of the ledger, on the real Postgres: ended goals older than the cut leave it with
everything hanging off them; running goals, recent ones and other meshes' stay."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from agents import events as ev
from agents.cli import main as mesh_cli
from agents.ledger.db import open_pool
from agents.ledger.prune import forget_fired_timers, prune
from agents.planner import repository
from agents.runtime.settings import MeshSettings
from tests.mesh_support import stored
from tests.support import envelope, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def meshes() -> tuple[str, str]:
    return unique("prune-") + ".", unique("other-") + "."


@pytest.fixture
def ledger(stack_settings: MeshSettings, meshes: tuple[str, str]) -> Iterator[ConnectionPool]:
    pool = open_pool(stack_settings, autocommit=True)
    yield pool
    with pool.connection() as conn:
        conn.execute("delete from goals where mesh = any(%s)", (list(meshes),))
    pool.close()


def goal(pool: ConnectionPool, mesh: str, status: str, ended_days_ago: float | None) -> str:
    """A goal of ``mesh`` in ``status``, with a timer, a usage row, an effect memo and a fence."""
    goal_id = unique("goal-")
    with pool.connection() as conn:
        submitted = ev.GoalSubmitted(envelope=envelope(goal_id), text="t")
        repository.write(conn, [stored(submitted)], mesh=mesh)
        conn.execute(
            "update goals set status = %s, finished_at = now() - make_interval(days => %s) "
            "where goal_id = %s",
            (status, ended_days_ago or 0, goal_id),
        )
        if ended_days_ago is None:
            conn.execute("update goals set finished_at = null where goal_id = %s", (goal_id,))
        conn.execute(
            "insert into timers (goal_id, mesh, kind, due_at, fired_at) "
            "values (%s, %s, 'retry', now(), now() - interval '2 hours')",
            (goal_id, mesh),
        )
        conn.execute(
            "insert into usage_log (goal_id, source, input_tokens, output_tokens, cost_usd) "
            "values (%s, 'engine', 1, 1, 0.0)",
            (goal_id,),
        )
        key = f"{goal_id}:step:abc"
        conn.execute(
            "insert into tool_effects (idempotency_key, tool, result) values (%s, 'echo', '{}')",
            (key,),
        )
        conn.execute(
            "insert into effect_fences (idempotency_key, token) values (%s, 1)",
            (f"{goal_id}:step",),
        )
    return goal_id


def left(pool: ConnectionPool, goal_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """Per goal: whether it, its timers, usage, effect memos and fences are still there."""
    found = {}
    with pool.connection() as conn:
        for goal_id in goal_ids:
            like = goal_id + ":%"
            found[goal_id] = tuple(
                conn.execute(sql, (param,)).fetchone()[0]  # type: ignore[index]
                for sql, param in [
                    ("select count(*) from goals where goal_id = %s", goal_id),
                    ("select count(*) from timers where goal_id = %s", goal_id),
                    ("select count(*) from usage_log where goal_id = %s", goal_id),
                    ("select count(*) from tool_effects where idempotency_key like %s", like),
                    ("select count(*) from effect_fences where idempotency_key like %s", like),
                ]
            )
    return found


def test_ended_goals_older_than_the_cut_leave_with_everything_of_theirs(
    ledger: ConnectionPool, meshes: tuple[str, str]
) -> None:
    mesh, other = meshes
    old = [goal(ledger, mesh, status, 40) for status in ("completed", "failed", "cancelled")]
    kept = [
        goal(ledger, mesh, "completed", 5),  # ended, but recently
        goal(ledger, mesh, "running", None),
        goal(ledger, mesh, "waiting_human", None),
        goal(ledger, other, "completed", 40),  # another mesh's
    ]
    assert prune(ledger, mesh=mesh, older_than_days=30, chunk=2) == 3
    after = left(ledger, old + kept)
    assert [after[g] for g in old] == [(0, 0, 0, 0, 0)] * 3
    assert [after[g] for g in kept] == [(1, 1, 1, 1, 1)] * 4
    assert prune(ledger, mesh=mesh, older_than_days=30) == 0


def test_timers_that_fired_long_ago_are_forgotten(
    ledger: ConnectionPool, meshes: tuple[str, str]
) -> None:
    running = goal(ledger, meshes[0], "running", None)  # its timer fired two hours ago
    with ledger.connection() as conn:
        conn.execute(
            "insert into timers (goal_id, mesh, kind, due_at) values (%s, %s, 'retry', now())",
            (running, meshes[0]),
        )
    forget_fired_timers(ledger, older_than_s=3600)
    with ledger.connection() as conn:
        rows = conn.execute(
            "select fired_at is null from timers where goal_id = %s", (running,)
        ).fetchall()
    assert rows == [(True,)]  # the one still to fire stays


def test_the_cli_prunes_this_meshs_goals_and_refuses_a_negative_age(
    stack_settings: MeshSettings,
    ledger: ConnectionPool,
    meshes: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mesh = meshes[0]
    ended = goal(ledger, mesh, "failed", 3)
    monkeypatch.setenv("MESH_TOPIC_PREFIX", mesh)
    assert mesh_cli(["ledger", "prune", "--older-than", "2"]) == 0
    assert f"pruned 1 goal(s) of mesh {mesh!r}" in capsys.readouterr().out
    assert left(ledger, [ended])[ended] == (0, 0, 0, 0, 0)
    assert mesh_cli(["ledger", "prune", "--older-than", "-1"]) == 2
    assert "--older-than" in capsys.readouterr().err
