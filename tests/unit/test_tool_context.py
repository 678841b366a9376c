"""Fencing tokens and a tool call's stopping rules, without services."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest

from agents.tools.base import (
    COMPENSATION_FENCE,
    CancelledError,
    ToolContext,
    ToolResources,
    ToolTimeoutError,
    action_fence,
    fenced_keys,
)

pytestmark = pytest.mark.unit


def context(**fields: Any) -> ToolContext:
    return ToolContext(
        goal_id="g",
        task_id="t",
        step_id="s",
        attempt=1,
        idempotency_key="g:s:abc",
        goal_input={},
        resources=ToolResources(db=cast(Any, None), sandbox_dir=Path()),
        **fields,
    )


def test_a_newer_plan_version_outranks_every_attempt_of_an_older_one() -> None:
    assert action_fence(1, 1) < action_fence(1, 2) < action_fence(2, 1)
    assert action_fence(1, (1 << 20) - 1) < action_fence(2, 1)
    assert action_fence(0, 1) > 0 and action_fence((1 << 42) - 1, 1) < COMPENSATION_FENCE


@pytest.mark.parametrize(("version", "attempt"), [(1, 0), (1, 1 << 20), (-1, 1), (1 << 42, 1)])
def test_tokens_out_of_range_are_refused(version: int, attempt: int) -> None:
    with pytest.raises(ValueError, match="fence"):
        action_fence(version, attempt)


def test_a_fresh_call_goes_on() -> None:
    ctx = context(deadline=time.monotonic() + 60)
    assert not ctx.cancelled()
    ctx.checkpoint()


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"deadline": 0.0}, ToolTimeoutError),
        ({"goal_cancelled": lambda: True}, CancelledError),
    ],
)
def test_a_call_past_its_deadline_or_of_a_cancelled_goal_stops(
    fields: dict[str, Any], error: type[Exception]
) -> None:
    ctx = context(**fields)
    assert ctx.cancelled()
    with pytest.raises(error):
        ctx.checkpoint()


def test_time_up_wins_over_a_cancelled_goal() -> None:
    # "cancelled" promises nothing was done; a timed-out call makes no such promise.
    ctx = context(deadline=0.0, goal_cancelled=lambda: True)
    with pytest.raises(ToolTimeoutError):
        ctx.checkpoint()


def test_a_sleep_stops_when_the_worker_gives_up() -> None:
    ctx = context()
    with ThreadPoolExecutor(1) as thread:
        sleeping = thread.submit(ctx.sleep, 60)
        ctx.given_up.set()
        error = sleeping.exception(timeout=5)
    assert isinstance(error, ToolTimeoutError)
    assert (error.category, error.retryable) == ("timeout", True)


def test_a_sleep_stops_when_the_goal_is_cancelled() -> None:
    cancelled = threading.Event()
    ctx = context(goal_cancelled=cancelled.is_set)
    with ThreadPoolExecutor(1) as thread:
        sleeping = thread.submit(ctx.sleep, 60)
        cancelled.set()
        error = sleeping.exception(timeout=5)
    assert isinstance(error, CancelledError)
    assert (error.category, error.retryable) == ("cancelled", False)


def test_a_short_sleep_ends_on_time() -> None:
    started = time.monotonic()
    context().sleep(0.1)
    assert time.monotonic() - started >= 0.1


@pytest.mark.parametrize(
    ("key", "claims"),
    [
        ("g1:email:0123456789abcdef", ("g1:email", "g1:email:0123456789abcdef")),
        ("g1:email", ("g1:email",)),  # an older planner's key names the step alone
        ("opaque", ("opaque",)),
    ],
)
def test_a_call_claims_its_steps_stem_before_its_key(key: str, claims: tuple[str, ...]) -> None:
    assert fenced_keys(key) == claims
