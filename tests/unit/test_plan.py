"""Plan validation, reference resolution, a goal state's results and the budget checks (the
decider's policies are in ``test_decide*``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents.engines.base import PlanDraft, PlanInvalid, PlanStep
from agents.enums import GoalStatus, TaskStatus
from agents.planner.budget import budget_problem
from agents.planner.plan import resolve_arguments, validate_plan
from agents.planner.state import Goal, GoalState, Task, results_by_step
from agents.tools.catalogue import default_registry

pytestmark = pytest.mark.unit
REGISTRY = default_registry()
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def draft(*steps: dict[str, Any]) -> PlanDraft:
    return PlanDraft(steps=[PlanStep(**s) for s in steps])


def category(plan: PlanDraft, max_steps: int = 10) -> str:
    with pytest.raises(PlanInvalid) as caught:
        validate_plan(plan, REGISTRY, max_steps)
    return caught.value.category


def test_a_valid_plan_comes_back_in_dependency_order() -> None:
    plan = draft(
        {
            "id": "b",
            "tool": "echo",
            "arguments": {"value": {"$ref": "a.value"}},
            "depends_on": ["a"],
        },
        {"id": "a", "tool": "echo", "arguments": {"value": 1}},
    )
    assert validate_plan(plan, REGISTRY, 5) == ["a", "b"]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([], "empty_plan"),
        ([{"id": f"s{n}", "tool": "echo"} for n in range(11)], "too_many_steps"),
        ([{"id": "a", "tool": "echo"}, {"id": "a", "tool": "echo"}], "duplicate_step"),
        ([{"id": "a", "tool": "teleport"}], "unknown_tool"),
        ([{"id": "a", "tool": "echo", "depends_on": ["ghost"]}], "unknown_dependency"),
        (
            [
                {"id": "a", "tool": "echo", "depends_on": ["c"]},
                {"id": "b", "tool": "echo", "depends_on": ["a"]},
                {"id": "c", "tool": "echo", "depends_on": ["b"]},
            ],
            "cyclic_plan",
        ),
        ([{"id": "a", "tool": "echo", "arguments": {"colour": "red"}}], "invalid_arguments"),
        ([{"id": "a", "tool": "pause", "arguments": {}}], "invalid_arguments"),
        ([{"id": "a", "tool": "pause", "arguments": {"seconds": -1}}], "invalid_arguments"),
        ([{"id": "a", "tool": "pause", "arguments": {"seconds": "soon"}}], "invalid_arguments"),
        (
            [
                {"id": "a", "tool": "echo"},
                {"id": "b", "tool": "echo", "arguments": {"value": {"$ref": "a.value"}}},
            ],
            "bad_reference",  # b does not depend on a
        ),
        (
            [
                {"id": "a", "tool": "echo"},
                {
                    "id": "b",
                    "tool": "echo",
                    "arguments": {"value": {"$ref": "a.nothing"}},
                    "depends_on": ["a"],
                },
            ],
            "bad_reference",
        ),
    ],
)
def test_broken_rules_are_named(steps: list[dict[str, Any]], expected: str) -> None:
    assert category(draft(*steps)) == expected


def test_transitive_dependencies_may_be_referenced() -> None:
    plan = draft(
        {"id": "a", "tool": "echo", "arguments": {"value": 1}},
        {"id": "b", "tool": "echo", "depends_on": ["a"]},
        {
            "id": "c",
            "tool": "echo",
            "arguments": {"value": {"$ref": "a.value"}},
            "depends_on": ["b"],
        },
    )
    assert validate_plan(plan, REGISTRY, 5)[-1] == "c"


def test_references_resolve_from_results() -> None:
    args = {"plain": 1, "org": {"$ref": "organisation.org_id"}}
    assert resolve_arguments(args, {"organisation": {"org_id": "org_1"}}) == {
        "plain": 1,
        "org": "org_1",
    }


def task(step: str, status: TaskStatus = TaskStatus.PENDING, version: int = 1) -> Task:
    return Task(
        task_id=f"g.{version}.{step}",
        goal_id="g",
        plan_version=version,
        step_id=step,
        tool="echo",
        arguments={},
        depends_on=(),
        pool="default",
        status=status,
        result={"value": step} if status is TaskStatus.SUCCEEDED else None,
    )


def test_results_are_those_of_the_succeeded_steps() -> None:
    tasks = [
        task("a", TaskStatus.SUCCEEDED),
        task("b", TaskStatus.DISPATCHED),
        task("c", TaskStatus.FAILED),
        task("d", TaskStatus.SUCCEEDED),
    ]
    assert results_by_step(tasks) == {"a": {"value": "a"}, "d": {"value": "d"}}


def test_the_current_plan_is_the_latest_version_s_actions_in_task_order() -> None:
    state = GoalState(goal(plan_version=2))
    for t in (task("b", version=2), task("a", version=1), task("a", version=2)):
        state = state.with_task(t)
    assert [t.task_id for t in state.current()] == ["g.2.a", "g.2.b"]


def goal(**changes: Any) -> Goal:
    base = Goal(goal_id="g", status=GoalStatus.RUNNING, max_steps=5, submitted_at=NOW)
    return replace(base, **{"plan_version": 1, **changes})


@pytest.mark.parametrize(
    ("changes", "counting_steps", "expected"),
    [
        ({}, True, None),
        ({"steps_used": 4}, True, None),
        ({"steps_used": 5}, True, "budget_steps"),
        ({"steps_used": 5}, False, None),  # an engine call is not a step
        ({"max_tokens": 100, "input_tokens": 50, "output_tokens": 50}, True, "budget_tokens"),
        ({"max_tokens": 100, "input_tokens": 50, "output_tokens": 49}, True, None),
        ({"max_tokens": 100, "input_tokens": 100}, False, "budget_tokens"),
        ({"budget_usd": 0.5, "cost_usd": 0.5}, True, "budget_cost"),
        ({"budget_usd": 0.5, "cost_usd": 0.49}, True, None),
        ({"deadline_at": NOW - timedelta(seconds=1)}, True, "deadline"),
        ({"deadline_at": NOW}, False, "deadline"),
        ({"deadline_at": NOW + timedelta(seconds=1)}, True, None),
    ],
)
def test_budgets_are_checked_before_each_dispatch(
    changes: dict[str, Any], counting_steps: bool, expected: str | None
) -> None:
    problem = budget_problem(goal(**changes), NOW, counting_steps=counting_steps)
    assert (problem[0] if problem else None) == expected


def test_a_plan_past_the_size_limit_is_refused_before_its_checks() -> None:
    """A chain of 10,000 steps (the largest max_steps) is refused by its length alone, without
    building each step's ancestors, which took seconds and gigabytes."""
    chain = PlanDraft(
        steps=[
            PlanStep(
                id=f"s{n}",
                tool="echo",
                arguments={"value": n},
                depends_on=[f"s{n - 1}"] if n else [],
            )
            for n in range(10_000)
        ]
    )
    with pytest.raises(PlanInvalid, match=r"at most 1000 \(MESH_MAX_PLAN_STEPS\)") as caught:
        validate_plan(chain, REGISTRY, 10_000)
    assert caught.value.category == "plan_too_large"
    at_the_limit = PlanDraft(steps=chain.steps[:1000])
    assert validate_plan(at_the_limit, REGISTRY, 10_000)[-1] == "s999"
