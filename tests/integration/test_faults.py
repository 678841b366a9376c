"""Kill agents with SIGKILL between every pair of writes and restart them: every goal still
completes and every side effect happens exactly once. Plus the lease watchdog."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis

from agents.client import GoalHandle, GoalStatus, MeshClient
from agents.demo import onboarding_input
from agents.runtime.fleet import Fleet
from agents.runtime.settings import MeshSettings
from tests.integration.test_mesh import ONCE, effects
from tests.mesh_support import agent_env, ledger_rows, steps_input, wait_groups
from tests.support import assert_eventually

pytestmark = pytest.mark.integration
GOALS = 5


def supervise(
    fleet: Fleet, handles: list[GoalHandle], clean: dict[str, str], timeout: float
) -> tuple[list[GoalStatus], int]:
    """Restart dead agents (without the crash switch) until every goal settles."""
    restarts = 0
    deadline = time.monotonic() + timeout
    while True:
        for member in fleet.members:
            if not member.alive():
                member.kill()  # reap and close its log
                member.env = clean
                member.start()
                restarts += 1
        finals = [h.status() for h in handles]
        if all(f.settled for f in finals) or time.monotonic() > deadline:
            return finals, restarts
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("role", "point", "after"),
    [
        ("worker-1", "worker.after_effect", 3),
        ("worker-1", "consumer.after_publish", 2),
        ("planner", "ledger.after_commit", 4),
        ("planner", "consumer.after_publish", 3),
        ("evaluator", "consumer.after_publish", 2),
    ],
)
def test_killed_agents_lose_nothing_and_repeat_no_effect(
    mesh_settings: MeshSettings, tmp_path: Path, role: str, point: str, after: int
) -> None:
    clean = agent_env(mesh_settings, tmp_path)
    fleet = Fleet(env=clean, log_dir=tmp_path / "logs")
    for name, args in [
        ("planner", ["planner"]),
        ("worker-1", ["worker"]),
        ("worker-2", ["worker"]),
        ("evaluator", ["evaluator"]),
    ]:
        member = fleet.add(name, *args)
        if name == role:
            member.env = clean | {"MESH_CRASH_AT": point, "MESH_CRASH_AFTER": str(after)}
    names = [f"Crashco {uuid.uuid4().hex[:8]}" for _ in range(GOALS)]
    with fleet, MeshClient(mesh_settings) as client:
        wait_groups(mesh_settings, {"planner": 1, "worker-all": 2, "evaluator": 1})
        handles = [client.submit(f"onboard {n}", input=onboarding_input(n, {})) for n in names]
        finals, restarts = supervise(fleet, handles, clean, timeout=120)
    assert restarts >= 1, "the crash point was never reached"
    assert [f.status for f in finals] == ["completed"] * GOALS, finals
    for name in names:
        assert effects(mesh_settings, name, tmp_path / "sandbox") == ONCE, name


def test_a_worker_that_dies_mid_task_is_noticed_and_the_task_retried(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    env = agent_env(mesh_settings, tmp_path)
    fleet = Fleet(env=env, log_dir=tmp_path / "logs")
    fleet.add("planner", "planner")
    worker = fleet.add("worker-1", "worker")
    fleet.add("evaluator", "evaluator")
    with fleet, MeshClient(mesh_settings) as client:
        wait_groups(mesh_settings, {"planner": 1, "worker-all": 1, "evaluator": 1})
        handle = client.submit(
            "slow", input=steps_input({"id": "slow", "tool": "pause", "arguments": {"seconds": 2}})
        )
        leases = redis.Redis.from_url(mesh_settings.redis_url.get_secret_value())
        key = f"{mesh_settings.topic_prefix}leases"
        assert_eventually(lambda: leases.zcard(key) == 1, timeout=30, what="the task started")
        worker.kill()
        # No worker runs now: only the watchdog can move the task on to its next attempt.
        assert_eventually(
            lambda: handle.status().tasks[0].attempts == 2, timeout=30, what="a second attempt"
        )
        fleet.add("worker-2", "worker").start()
        final = handle.wait(60)
    assert final.status == "completed", final
    first = ledger_rows(
        mesh_settings,
        "select a.category from attempts a join tasks t using (task_id) "
        "where t.goal_id = %s and a.attempt = 1",
        (handle.goal_id,),
    )
    assert first[0][0] == "lease_expired"


def test_a_retry_scheduled_before_every_agent_died_fires_after_restart_not_before(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    env = agent_env(mesh_settings, tmp_path)
    fleet = Fleet(env=env, log_dir=tmp_path / "logs")
    for name in ("planner", "worker", "evaluator"):
        fleet.add(name, name)
    step = {"id": "f", "tool": "flaky", "arguments": {"fail_times": 1, "value": "ok"}}
    with MeshClient(mesh_settings) as client:
        with fleet:
            wait_groups(mesh_settings, {"planner": 1, "worker-all": 1, "evaluator": 1})
            goal = client.submit("flaky once", input=steps_input(step))
            timer = assert_eventually(
                lambda: ledger_rows(
                    mesh_settings,
                    "select timer_id, due_at from timers where goal_id = %s and kind = 'retry'",
                    (goal.goal_id,),
                ),
                timeout=30,
                what="the retry scheduled",
            )[0]
            for member in fleet.members:
                member.kill()  # every agent, at once, while the retry waits
        (pending,) = ledger_rows(
            mesh_settings,
            "select fired_at, now() < due_at from timers where timer_id = %s",
            (timer[0],),
        )
        assert pending[0] is None  # nobody fired it
        restarted = Fleet(env=env, log_dir=tmp_path / "logs-2")
        for name in ("planner", "worker", "evaluator"):
            restarted.add(name, name)
        with restarted:
            final = goal.client.handle(goal.goal_id).wait(60)
    assert final.status == "completed", final
    ((fired, due, dispatched),) = ledger_rows(
        mesh_settings,
        "select t.fired_at, t.due_at, a.dispatched_at from timers t join attempts a "
        "on a.task_id = t.task_id and a.attempt = 2 where t.timer_id = %s",
        (timer[0],),
    )
    assert fired >= due and dispatched >= due
