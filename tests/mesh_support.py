"""Running real agent processes in tests: environments, fleets, group readiness, ledger reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from agents import events as ev
from agents.enums import GoalStatus
from agents.planner.changes import GoalPut
from agents.planner.state import Goal
from agents.runtime.fleet import Fleet
from agents.runtime.kafka import client_config, coordinator_busy, groups_settled
from agents.runtime.settings import MeshSettings
from tests.support import assert_eventually, unique
from topics.admin import drop, ensure


@contextmanager
def own_topics(settings: MeshSettings, **updates: Any) -> Iterator[MeshSettings]:
    """Settings with a topic prefix of their own (and ``updates``), the topics created, and
    dropped afterwards: every partition left behind costs the broker work on each request."""
    mine = settings.model_copy(update={"topic_prefix": unique("t.") + ".", **updates})
    ensure(mine)
    try:
        yield mine
    finally:
        drop(mine)


def agent_env(settings: MeshSettings, tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of agent processes that talk to this test's topics and folders."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "MESH_TOPIC_PREFIX": settings.topic_prefix,
        "MESH_SANDBOX_DIR": str(tmp / "sandbox"),
        "MESH_TRACE_FILE": str(tmp / "traces.jsonl"),
        "MESH_LEASE_TTL_S": "3",
        **extra,
    }


def wait_groups(settings: MeshSettings, members: dict[str, int], timeout: float = 60.0) -> None:
    """Wait until each consumer group (by role suffix) is stable with that many members."""
    admin = AdminClient(client_config(settings, client_id="test-groups"))
    named = {f"{settings.topic_prefix}{suffix}": want for suffix, want in members.items()}
    assert_eventually(
        lambda: groups_settled(admin, named, assigned=False),
        timeout=timeout,
        interval=0.2,
        what=f"consumer groups {members}",
    )


@contextmanager
def running_mesh(
    settings: MeshSettings,
    tmp: Path,
    *,
    workers: int = 2,
    worker_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[Fleet]:
    """A planner, ``workers`` workers and an evaluator, ready (every group stable) on entry."""
    fleet = Fleet(env=env or agent_env(settings, tmp), log_dir=tmp / "logs")
    fleet.add("planner", "planner")
    for n in range(workers):
        fleet.add(f"worker-{n + 1}", "worker", *worker_args)
    fleet.add("evaluator", "evaluator")
    with fleet:
        wait_groups(settings, {"planner": 1, "worker-all": workers, "evaluator": 1})
        yield fleet


def ledger_rows(
    settings: MeshSettings, sql: str, params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def steps_input(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Goal input for the offline engine's explicit-steps playbook."""
    return {"playbook": "steps", "steps": list(steps), **extra}


def wait_for_group_coordinator(settings: MeshSettings, timeout: float = 60.0) -> None:
    """Return once the broker answers consumer-group requests (it creates its offsets topic on
    the first one, which takes a moment on a fresh broker)."""
    admin = AdminClient(client_config(settings, client_id="test-warmup"))

    def answers() -> bool:
        future = admin.describe_consumer_groups(["mesh-warmup"], request_timeout=5)["mesh-warmup"]
        try:
            future.result()
        except KafkaException as exc:
            if coordinator_busy(exc):
                return False
            raise
        return True

    assert_eventually(answers, timeout=timeout, interval=0.2, what="the group coordinator")


def stored(goal: ev.GoalSubmitted) -> GoalPut:
    """The goal's row as the planner takes it in."""
    return GoalPut(
        Goal(
            goal_id=goal.goal_id,
            status=GoalStatus.PLANNING,
            max_steps=goal.max_steps,
            submitted_at=goal.envelope.occurred_at,
            confidence_threshold=goal.confidence_threshold,
        ),
        new=True,
        text=goal.text,
        input=goal.input,
        submitted_by=goal.submitted_by,
    )
