"""Retries: when a step runs again, after how long, and when its retries run out.

A tool's own retry policy counts the attempts the tool failed. Attempts lost to the
infrastructure (the worker died or stalled and its lease expired) have a budget of their own,
generous and with a backoff of its own, so killing workers delays goals but does not fail them.
Runaway goals end early: the same failure again and again, or no step accepted for long.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agents.planner.state import Goal, Task
from agents.tools.base import RetryPolicy

INFRA_CATEGORIES = frozenset({"lease_expired"})
"""Failure categories that say the infrastructure lost the attempt, not that the tool failed."""


@dataclass(frozen=True)
class Limits:
    """The planner's settings for retries, early termination and escalations."""

    same_failure: int = 10  # the same (category, message) this often ends the goal
    no_progress: int = 20  # this many verdicts in a row without an accept end the goal
    escalation_ttl_s: float = 3600.0
    escalation_default: str = "abort"
    infra_retries: int = 50  # attempts a step may lose to the infrastructure
    plan_steps: int = 1000  # steps a plan may have (``MESH_MAX_PLAN_STEPS``)
    infra_backoff: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(initial_delay_s=0.5, factor=2.0, max_delay_s=10.0)
    )


@dataclass(frozen=True)
class Again:
    """Run the step again after ``delay_s``; ``infra``: the attempt was lost to the
    infrastructure (it does not count against the tool's policy)."""

    delay_s: float
    infra: bool


@dataclass(frozen=True)
class Exhausted:
    """No attempts left: escalate, or (``fail``) fail the step for good."""

    reason: str
    fail: bool


def next_attempt(
    task: Task, policy: RetryPolicy, limits: Limits, draw: float, reason: str
) -> Again | Exhausted:
    """What follows a retry verdict on ``task``'s current attempt."""
    category = task.current.category if task.current is not None else None
    if category in INFRA_CATEGORIES:
        losses = task.infra_losses + 1
        if losses <= limits.infra_retries:
            return Again(limits.infra_backoff.delay(losses, draw), infra=True)
        return Exhausted(f"step {task.step_id} lost {losses} attempts: {reason}", fail=False)
    used = task.attempt - task.floor
    if used >= policy.max_attempts:
        fail = not policy.escalate_when_exhausted and task.action
        return Exhausted(f"step {task.step_id} failed {used} time(s): {reason}", fail=fail)
    return Again(policy.delay(used, draw), infra=False)


def early_stop(goal: Goal, limits: Limits) -> tuple[str, str] | None:
    """Why a runaway goal should end now instead of retrying, as (category, message)."""
    worst = _most_repeated(goal.failures)
    if worst is not None and worst[1] >= limits.same_failure:
        return (
            "repeated_failure",
            f"the same failure happened {worst[1]} times: {worst[0]}",
        )
    if goal.since_accept >= limits.no_progress:
        return "no_progress", f"no step succeeded in the last {limits.no_progress} verdicts"
    return None


def _most_repeated(failures: Mapping[str, int]) -> tuple[str, int] | None:
    if not failures:
        return None
    signature = max(failures, key=lambda s: failures[s])
    return signature, failures[signature]
