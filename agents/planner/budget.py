"""Budgets: steps, tokens, cost and deadline, checked before every dispatch and engine call."""

from __future__ import annotations

from datetime import datetime

from agents.planner.state import Goal, Task


def budget_problem(
    goal: Goal, now: datetime, *, counting_steps: bool = True
) -> tuple[str, str] | None:
    """Why one more step (or, without ``counting_steps``, one more engine call) may not go ahead,
    as (category, message); None when it may."""
    if counting_steps and goal.steps_used >= goal.max_steps:
        return "budget_steps", f"the goal used its {goal.max_steps} steps"
    if goal.max_tokens is not None and goal.tokens >= goal.max_tokens:
        return "budget_tokens", f"the goal used {goal.tokens} of {goal.max_tokens} tokens"
    if goal.budget_usd is not None and goal.cost_usd >= goal.budget_usd:
        return "budget_cost", f"the goal spent ${goal.cost_usd:.4f} of ${goal.budget_usd:.4f}"
    if goal.deadline_at is not None and now >= goal.deadline_at:
        return "deadline", f"the goal's deadline {goal.deadline_at.isoformat()} passed"
    return None


def one_at_a_time(goal: Goal) -> bool:
    """A goal with a token or cost ceiling runs one step at a time: what a step will spend is
    known only after it ran, so this is what keeps the overshoot to at most that one step.
    Goals bounded only by steps and deadline fan out freely."""
    return goal.max_tokens is not None or goal.budget_usd is not None


def busy(tasks: list[Task]) -> bool:
    """Whether an action step is running or being judged."""
    return any(t.action and t.in_flight for t in tasks)
