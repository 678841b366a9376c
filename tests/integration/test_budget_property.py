"""Property: whatever the plan and whatever fails, a goal never exceeds its step, token or cost
budget by more than the one step in flight. The planner runs in-process against the real ledger;
workers and evaluator are played by the test, feeding the planner the events they would send."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import events as ev
from agents.engines.offline import OfflineEngine
from agents.ledger.migrate import migrate
from agents.planner import repository
from agents.planner.agent import Planner
from agents.runtime.consumer import Delivery
from agents.runtime.settings import MeshSettings
from agents.tools.catalogue import default_registry

pytestmark = pytest.mark.integration
DELIVERY = Delivery("t", 0, 0, None, (), 0, None)
MAX_STEP_TOKENS = 200  # a tool call and its verdict spend at most 100 tokens each here
MAX_STEP_COST = 0.002 + 1e-9  # and float sums round


@st.composite
def plans(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 7))
    steps = []
    for n in range(count):
        deps = draw(st.lists(st.sampled_from(range(n)), unique=True, max_size=2)) if n else []
        steps.append(
            {
                "id": f"s{n}",
                "tool": "echo",
                "arguments": {"value": n},
                "depends_on": [f"s{d}" for d in deps],
            }
        )
    return steps


outcomes = st.lists(
    st.tuples(
        st.sampled_from(["ok", "transient", "wrong"]), st.integers(0, 100), st.integers(0, 100)
    ),
    min_size=1,
    max_size=40,
)


@pytest.fixture(scope="module")
def conn(stack_settings: MeshSettings) -> Iterator[psycopg.Connection[Any]]:
    migrate(stack_settings.database_url.get_secret_value())
    with psycopg.connect(stack_settings.database_url.get_secret_value()) as connection:
        yield connection


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=plans(),
    pattern=outcomes,
    max_steps=st.integers(1, 12),
    max_tokens=st.one_of(st.none(), st.integers(0, 600)),
    budget=st.one_of(st.none(), st.floats(0, 0.01)),
    batched=st.booleans(),
)
def test_no_goal_exceeds_its_budgets_by_more_than_one_step(
    conn: psycopg.Connection[Any],
    steps: list[dict[str, Any]],
    pattern: list[tuple[str, int, int]],
    max_steps: int,
    max_tokens: int | None,
    budget: float | None,
    batched: bool,
) -> None:
    # Timers come due at once: the planner's clock runs an hour behind the database's.
    planner = Planner(
        engine=OfflineEngine(),
        registry=default_registry(),
        clock=lambda: datetime.now(UTC) - timedelta(hours=1),
        mesh=f"property.{ev.new_id()}.",  # its timers only: other tests' goals share the ledger
    )
    goal = ev.GoalSubmitted(
        envelope=ev.Envelope(goal_id=ev.new_id()),
        text="property",
        input={"playbook": "steps", "steps": steps},
        max_steps=max(max_steps, len(steps)),
        max_tokens=max_tokens,
        budget_usd=budget,
        compensation_policy="none",
    )
    limit = goal.max_steps

    # Each event alone in a batch as the ledger sink runs one (the batch snapshot charges held
    # goals in memory), or handled on its own as the record-by-record retry does.
    def handle(event: ev.Event) -> list[ev.Event]:
        return _handle(conn, planner, event, batched=batched)

    queue = handle(goal)
    outcomes_left = list(pattern)
    while queue:
        event = queue.pop(0)
        if isinstance(event, ev.TaskAssigned):
            kind, tool_tokens, judge_tokens = (
                outcomes_left.pop(0) if outcomes_left else ("ok", 0, 0)
            )
            for reply in _worker_and_evaluator(event, kind, tool_tokens, judge_tokens):
                queue += handle(reply)
        if not queue:
            queue += _run(conn, lambda c: _fire(planner, c))
    row = conn.execute(
        "select status, steps_used, input_tokens + output_tokens, cost_usd from goals "
        "where goal_id = %s",
        (goal.goal_id,),
    ).fetchone()
    conn.commit()
    assert row is not None
    status, used, tokens, cost = row
    assert status in ("completed", "failed", "waiting_human")
    assert used <= limit
    if max_tokens is not None:
        assert tokens <= max_tokens + MAX_STEP_TOKENS
    if budget is not None:
        assert cost <= budget + MAX_STEP_COST


def _run(conn: psycopg.Connection[Any], call: Any) -> list[ev.Event]:
    with conn.transaction():
        return list(call(conn))


def _handle(
    conn: psycopg.Connection[Any], planner: Planner, event: ev.Event, *, batched: bool
) -> list[ev.Event]:
    handler = planner.handlers()[type(event)]
    with conn.transaction():
        if batched:
            planner.before_batch(conn, [event])
        out = list(handler(event, DELIVERY, conn))
        if batched:
            planner.after_batch(True)
        return out


def _fire(planner: Planner, conn: psycopg.Connection[Any]) -> list[ev.Event]:
    return [
        e
        for timer in repository.take_due_timers(conn, planner.mesh)
        for e in planner.on_timer(conn, timer)
    ]


def _worker_and_evaluator(
    task: ev.TaskAssigned, kind: str, tool_tokens: int, judge_tokens: int
) -> list[ev.Event]:
    env = ev.Envelope(goal_id=task.goal_id)
    now = ev.now()
    common = {"task_id": task.task_id, "step_id": task.step_id, "attempt": task.attempt}
    spent = ev.Usage(input_tokens=tool_tokens, cost_usd=tool_tokens * 1e-5)
    judged = ev.Usage(output_tokens=judge_tokens, cost_usd=judge_tokens * 1e-5)
    if kind == "transient":
        outcome: ev.Event = ev.TaskFailed(
            envelope=env,
            tool=task.tool,
            category="transient",
            message="503",
            retryable=True,
            worker_id="w",
            started_at=now,
            finished_at=now,
            usage=spent,
            **common,
        )
    else:
        outcome = ev.TaskCompleted(
            envelope=env,
            tool=task.tool,
            result={"value": 1},
            worker_id="w",
            started_at=now,
            finished_at=now,
            usage=spent,
            **common,
        )
    decision = "accept" if kind == "ok" else "retry"
    verdict = ev.TaskEvaluated(
        envelope=ev.Envelope(goal_id=task.goal_id),
        decision=decision,
        confidence=1.0,
        reason=kind,
        usage=judged,
        **common,
    )
    return [outcome, verdict]
