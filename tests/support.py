"""Helpers shared by the tests: polling with a deadline, sample events, unique names."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from agents import events as ev

T = TypeVar("T")


def assert_eventually(
    probe: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout:g}s: {what or probe}")
        time.sleep(interval)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def envelope(goal_id: str = "goal-1") -> ev.Envelope:
    return ev.Envelope(
        goal_id=goal_id, producer_agent="test", correlation_id="corr", causation_id="cause"
    )


def samples(goal_id: str = "goal-1") -> list[ev.Event]:
    """One fully populated instance of every event type of the contract."""
    t0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    t1 = t0 + timedelta(seconds=2)
    usage = ev.Usage(input_tokens=12, output_tokens=34, cost_usd=0.0025)
    env = envelope(goal_id)
    task = {"task_id": "task-1", "step_id": "billing", "attempt": 2}
    return [
        ev.GoalSubmitted(
            envelope=env,
            text="onboard Acme",
            input={"company": "Acme", "seats": 5},
            max_steps=10,
            max_tokens=5000,
            budget_usd=1.5,
            deadline_at=t1,
            confidence_threshold=0.7,
            submitted_by="alice",
        ),
        ev.GoalCancelled(envelope=env, reason="changed mind", requested_by="alice"),
        ev.TaskAssigned(
            envelope=env,
            plan_version=1,
            tool="configure_billing",
            arguments={"plan": "pro"},
            pool="billing",
            kind="action",
            timeout_s=5.0,
            idempotency_key="goal-1/billing/1",
            feedback="amount was wrong",
            task_id="task-1",
            step_id="billing",
            attempt=2,
        ),
        ev.TaskCompleted(
            envelope=env,
            tool="configure_billing",
            result={"account": "acct_1", "ok": True},
            worker_id="w1",
            started_at=t0,
            finished_at=t1,
            usage=usage,
            arguments={"plan": "pro"},
            **task,
        ),
        ev.TaskFailed(
            envelope=env,
            tool="configure_billing",
            category="transient",
            message="503",
            retryable=True,
            worker_id="w1",
            started_at=t0,
            finished_at=t1,
            details={"status": 503},
            usage=usage,
            **task,
        ),
        ev.TaskEvaluated(
            envelope=env,
            decision="retry",
            confidence=0.42,
            reason="looks off",
            feedback="use plan pro",
            usage=usage,
            **task,
        ),
        ev.GoalCompleted(
            envelope=env,
            summary="done",
            output={"org": "acme"},
            steps=6,
            usage=usage,
            duration_s=1.25,
        ),
        ev.GoalFailed(
            envelope=env,
            category="budget",
            message="over budget",
            summary="stopped",
            steps=3,
            usage=usage,
            duration_s=2.5,
            compensated=["infra", "org"],
        ),
        ev.EscalationRaised(
            envelope=env,
            escalation_id="esc-1",
            task_id="task-1",
            reason="billing down",
            evidence={"attempts": 5},
            options=["approve", "retry", "abort"],
            expires_at=t1,
            default_action="abort",
        ),
        ev.EscalationResolved(
            envelope=env,
            escalation_id="esc-1",
            action="set",
            values={"plan": "basic"},
            resolved_by="bob",
        ),
        ev.DeadLetter(
            envelope=env,
            category="undecodable",
            message="garbage",
            source_topic="mesh.goals",
            source_partition=3,
            source_offset=42,
            original_key=b"k",
            original_value=b"\x00\xff",
            original_headers=[ev.Header(key="h", value=b"v"), ev.Header(key="n", value=None)],
            agent="planner",
        ),
    ]
