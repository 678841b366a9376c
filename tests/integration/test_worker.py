"""The worker's validation layer against real Redis and Postgres: bad calls become categorised
failures, never crashes; timeouts, scopes and rate limits are enforced."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from agents import events as ev
from agents.ledger.db import open_pool
from agents.runtime.consumer import Delivery
from agents.runtime.settings import MeshSettings
from agents.runtime.shortlived import CancelFlags, Lease, Leases, RateLimiter, ReplayCache
from agents.tools.base import (
    COMPENSATION_FENCE,
    Registry,
    Tool,
    ToolContext,
    ToolResources,
    action_fence,
)
from agents.tools.catalogue import default_registry
from agents.worker.agent import Worker
from schemas.codec import Codec
from tests.support import assert_eventually, unique

pytestmark = pytest.mark.integration
DELIVERY = Delivery("t", 0, 0, None, (), 0, None)


@pytest.fixture
def pool(mesh_settings: MeshSettings) -> Iterator[ConnectionPool]:
    db = open_pool(mesh_settings)
    yield db
    db.close()


def worker(
    settings: MeshSettings,
    pool: ConnectionPool,
    tmp: Path,
    registry: Registry | None = None,
    **kw: Any,
) -> Worker:
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    return Worker(
        registry=registry or default_registry(),
        resources=ToolResources(db=pool, sandbox_dir=tmp),
        leases=Leases(client, prefix=settings.topic_prefix),
        limiter=RateLimiter(client, prefix=settings.topic_prefix),
        replay=ReplayCache(client, prefix=settings.topic_prefix, codec=Codec()),
        redis_client=client,
        worker_id="w-test",
        **kw,
    )


def assign(
    tool: str, arguments: dict[str, Any], timeout_s: float = 5.0, **fields: Any
) -> ev.TaskAssigned:
    goal = unique("goal-")
    return ev.TaskAssigned(
        envelope=ev.Envelope(goal_id=goal),
        task_id=f"{goal}.1.s",
        plan_version=1,
        step_id="s",
        tool=tool,
        arguments=arguments,
        idempotency_key=f"{goal}:s",
        timeout_s=timeout_s,
        **fields,
    )


def outcome(w: Worker, event: ev.TaskAssigned) -> ev.Event:
    (out,) = w.on_assigned(event, DELIVERY)
    return out


@pytest.mark.parametrize(
    ("tool", "arguments", "category"),
    [
        ("teleport", {}, "unknown_tool"),
        ("pause", {"seconds": "soon"}, "invalid_arguments"),
        ("pause", {}, "invalid_arguments"),
        ("echo", {"value": 1, "extra": True}, None),  # extra arguments are the tool's to refuse
    ],
)
def test_bad_calls_are_categorised_failures(
    mesh_settings: MeshSettings,
    pool: ConnectionPool,
    tmp_path: Path,
    tool: str,
    arguments: dict[str, Any],
    category: str | None,
) -> None:
    result = outcome(worker(mesh_settings, pool, tmp_path), assign(tool, arguments))
    if category is None:
        assert isinstance(result, ev.TaskCompleted)
    else:
        assert isinstance(result, ev.TaskFailed)
        assert result.category == category and not result.retryable


def test_a_tool_over_its_timeout_fails_as_retryable_timeout(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    result = outcome(
        worker(mesh_settings, pool, tmp_path), assign("pause", {"seconds": 2}, timeout_s=0.2)
    )
    assert isinstance(result, ev.TaskFailed)
    assert (result.category, result.retryable) == ("timeout", True)


def test_tools_outside_the_workers_scopes_are_forbidden(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    w = worker(mesh_settings, pool, tmp_path, scopes={"orgs:write"})
    args = {"org_id": "org_x", "plan": "pro", "seats": 1}
    result = outcome(w, assign("configure_billing", args))
    assert isinstance(result, ev.TaskFailed) and result.category == "forbidden"


def test_tasks_of_other_pools_are_left_alone(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    w = worker(mesh_settings, pool, tmp_path, pools={"billing"})
    assert w.on_assigned(assign("echo", {"value": 1}), DELIVERY) == []


def test_the_rate_limit_spreads_calls_over_seconds(mesh_settings: MeshSettings) -> None:
    limiter = RateLimiter(
        redis.Redis.from_url(mesh_settings.redis_url.get_secret_value()), prefix=unique("rl.")
    )
    seconds = []
    for _ in range(4):
        limiter.wait_turn("tool", 2)
        seconds.append(int(time.time()))
    assert max(seconds.count(s) for s in seconds) <= 2
    assert len(set(seconds)) >= 2


def test_a_repeated_assignment_sends_the_same_outcome_without_rerunning(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    w = worker(mesh_settings, pool, tmp_path)
    task = assign("pause", {"seconds": 0.05})
    first, again = outcome(w, task), outcome(w, task)
    assert isinstance(first, ev.TaskCompleted)
    assert again == first  # same event id: downstream inboxes drop it
    redis.Redis.from_url(mesh_settings.redis_url.get_secret_value()).flushdb()
    rerun = outcome(w, task)  # the cache is gone: the (idempotent) work runs again
    assert isinstance(rerun, ev.TaskCompleted) and rerun.event_id != first.event_id
    assert rerun.result["started_at"] > first.result["started_at"]


class _Value(BaseModel):
    value: int = 0


def _thread_tools(ran_on: dict[str, str]) -> Registry:
    def record(name: str) -> Callable[[_Value, ToolContext], _Value]:
        def run(args: _Value, ctx: ToolContext) -> _Value:
            ran_on[name] = threading.current_thread().name
            return args

        return run

    def make(name: str, **kw: Any) -> Tool[_Value, _Value]:
        return Tool(name, name, _Value, _Value, record(name), **kw)

    return Registry(
        [
            make("quick", inline=True),
            make("slow"),
            make("limited", inline=True, rate_limit_per_s=50),
        ]
    )


def test_inline_tools_run_on_the_handling_thread_and_others_on_a_thread_of_their_own(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    ran_on: dict[str, str] = {}
    w = worker(mesh_settings, pool, tmp_path, registry=_thread_tools(ran_on))
    for name in ("quick", "slow"):
        assert isinstance(outcome(w, assign(name, {"value": 1})), ev.TaskCompleted)
    here = threading.current_thread().name
    assert ran_on["quick"] == here and ran_on["slow"] != here
    # What the sink may run on its own thread: only what never waits.
    inline = {
        name: w.runs_inline(assign(name, {})) for name in ("quick", "slow", "limited", "nope")
    }
    assert inline == {"quick": True, "slow": False, "limited": False, "nope": True}


def _context_tools(seen: list[ToolContext], stopped: list[bool]) -> Registry:
    """``look`` records its context; ``wait`` waits until the worker gives up on it and records
    that it was told so."""

    def look(args: _Value, ctx: ToolContext) -> _Value:
        seen.append(ctx)
        return args

    def wait(args: _Value, ctx: ToolContext) -> _Value:
        stopped.append(ctx.given_up.wait(60) and ctx.cancelled())
        return args

    return Registry(
        [Tool("look", "look", _Value, _Value, look), Tool("wait", "wait", _Value, _Value, wait)]
    )


def test_the_call_gets_the_tasks_fence_undone_key_and_deadline(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    seen: list[ToolContext] = []
    w = worker(mesh_settings, pool, tmp_path, registry=_context_tools(seen, []))
    before = time.monotonic()
    task = assign("look", {}, timeout_s=7, fence=COMPENSATION_FENCE, undoes="g:s:1")
    assert isinstance(outcome(w, task), ev.TaskCompleted)
    (ctx,) = seen
    assert (ctx.fence, ctx.undoes) == (COMPENSATION_FENCE, "g:s:1")
    assert ctx.deadline is not None and before + 7 <= ctx.deadline <= time.monotonic() + 7


def test_a_timed_out_call_is_told_to_stop(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    stopped: list[bool] = []
    w = worker(mesh_settings, pool, tmp_path, registry=_context_tools([], stopped))
    result = outcome(w, assign("wait", {}, timeout_s=0.2, fence=action_fence(1, 1)))
    assert isinstance(result, ev.TaskFailed)
    assert (result.category, result.retryable) == ("timeout", True)
    assert assert_eventually(lambda: stopped, timeout=5, what="the call stopped") == [True]


def _flags(settings: MeshSettings) -> CancelFlags:
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    return CancelFlags(client, prefix=settings.topic_prefix)


def test_a_pause_stops_as_cancelled_when_its_goal_is_cancelled(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    flags = _flags(mesh_settings)
    w = worker(mesh_settings, pool, tmp_path, flags=flags)
    task = assign("pause", {"seconds": 60}, timeout_s=90)
    with ThreadPoolExecutor(1) as thread:
        running = thread.submit(outcome, w, task)
        flags.raise_flag(task.goal_id)
        result = running.result(timeout=10)
    assert isinstance(result, ev.TaskFailed)
    assert (result.category, result.retryable) == ("cancelled", False)


def test_a_compensation_runs_although_its_goal_is_cancelled(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    flags = _flags(mesh_settings)
    w = worker(mesh_settings, pool, tmp_path, flags=flags)
    task = assign("pause", {"seconds": 0.1}, kind="compensation", fence=COMPENSATION_FENCE)
    flags.raise_flag(task.goal_id)
    assert isinstance(outcome(w, task), ev.TaskCompleted)


def test_a_call_waiting_for_a_thread_holds_no_lease_until_it_starts(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    """A worker that dies loses only the calls it was running: the ones still queued behind
    them hold no lease, so the watchdog does not count them lost; they are delivered again."""
    w = worker(mesh_settings, pool, tmp_path)
    client = redis.Redis.from_url(mesh_settings.redis_url.get_secret_value())
    key = f"{mesh_settings.topic_prefix}leases"
    running, queued = assign("pause", {"seconds": 0.5}), assign("pause", {"seconds": 0.5})
    instant = assign("echo", {"value": 1})

    def leased(event: ev.TaskAssigned) -> bool:
        lease = Lease(event.task_id, event.attempt, event.goal_id, event.step_id, event.tool)
        return client.zscore(key, lease.member()) is not None

    w.before_batch([running, queued, instant])
    at_start = [leased(e) for e in (running, queued, instant)]
    with ThreadPoolExecutor(1) as one:
        call = one.submit(outcome, w, running)
        assert_eventually(lambda: leased(running))
        queued_meanwhile = leased(queued)
        assert isinstance(call.result(), ev.TaskCompleted)
    w.after_batch()

    assert at_start == [False, False, True]
    assert not queued_meanwhile
    assert not any(leased(e) for e in (running, queued, instant))  # all given back


def test_a_batch_with_nothing_to_lease_up_front_prefetches_all_the_same(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    w = worker(mesh_settings, pool, tmp_path)
    queued = assign("pause", {"seconds": 0})
    w.before_batch([queued])  # one Redis round trip, with no lease in it
    assert isinstance(outcome(w, queued), ev.TaskCompleted)
    w.after_batch()


def test_a_result_no_event_can_carry_fails_the_attempt_as_maybe_done(
    mesh_settings: MeshSettings, pool: ConnectionPool, tmp_path: Path
) -> None:
    """The planner must hear of every call; a result with a NUL cannot be reported as done."""

    class Said(BaseModel):
        text: str = ""

    def nul(args: _Value, ctx: ToolContext) -> Said:
        return Said(text="a\x00b")

    w = worker(mesh_settings, pool, tmp_path, Registry([Tool("nul", "nul", _Value, Said, nul)]))
    result = outcome(w, assign("nul", {}))
    assert isinstance(result, ev.TaskFailed)
    assert (result.category, result.retryable) == ("unreportable_result", False)
    assert "result: Value error, contains a NUL" in result.message
