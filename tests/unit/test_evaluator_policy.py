"""The runtime, not the engine, decides whether a retry is allowed; causal ordering of history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents import events as ev
from agents.engines.base import Judgement
from agents.evaluator.agent import Evaluator
from agents.history import causal_order
from agents.tools.catalogue import default_registry

pytestmark = pytest.mark.unit
NOW = datetime.now(UTC)


def failed(attempt: int, category: str = "transient", retryable: bool = True) -> ev.TaskFailed:
    return ev.TaskFailed(
        envelope=ev.Envelope(goal_id="g"),
        task_id="t",
        step_id="billing",
        tool="configure_billing",
        attempt=attempt,
        category=category,
        message="503",
        retryable=retryable,
        worker_id="w",
        started_at=NOW,
        finished_at=NOW,
    )


RETRY = Judgement(decision="retry", confidence=1.0, reason="transient")


def policy(event: ev.TaskFailed) -> str:
    evaluator = Evaluator(engine=None, registry=default_registry(), db=None)  # type: ignore[arg-type]
    tool = default_registry().get(event.tool)
    return evaluator._policy(event, tool, RETRY).decision


def test_retryable_failures_stay_retries_the_planner_counts_attempts() -> None:
    limit = default_registry().get("configure_billing").retry.max_attempts
    assert policy(failed(1)) == "retry"
    assert policy(failed(limit + 3)) == "retry"  # a human may have granted more attempts


def test_a_failure_category_outside_the_policy_does_not_retry() -> None:
    assert policy(failed(1, category="permanent", retryable=False)) == "fail"
    assert policy(failed(1, category="invalid_arguments", retryable=True)) == "fail"


def test_history_puts_every_event_after_its_cause() -> None:
    def event(eid: str, cause: str | None, seconds: float) -> Any:
        return ev.GoalCancelled(
            envelope=ev.Envelope(
                event_id=eid,
                goal_id="g",
                causation_id=cause,
                occurred_at=NOW + timedelta(seconds=seconds),
            )
        )

    # Clocks of different processes disagree: "b" claims to be earlier than its cause "a".
    events = [event("c", "b", 3), event("b", "a", 1), event("a", None, 2)]
    assert [e.event_id for e in causal_order(events)] == ["a", "b", "c"]
