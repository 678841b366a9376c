"""Plan validation, reference resolution and the planner's pure decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents.engines.base import PlanDraft, PlanInvalid, PlanStep
from agents.planner import decide
from agents.planner.decide import GoalRow, TaskRow
from agents.planner.plan import resolve_arguments, validate_plan
from agents.tools.catalogue import default_registry

pytestmark = pytest.mark.unit
REGISTRY = default_registry()


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


def task(step: str, status: str = "pending", deps: tuple[str, ...] = ()) -> TaskRow:
    return TaskRow(
        task_id=f"g.1.{step}",
        step_id=step,
        tool="echo",
        arguments={},
        depends_on=deps,
        pool="default",
        status=status,
        attempt=0,
        idempotency_key=f"g:{step}",
        result={"value": step} if status == "succeeded" else None,
    )


def test_ready_tasks_are_pending_with_every_dependency_done() -> None:
    tasks = [
        task("a", "succeeded"),
        task("b", "pending", ("a",)),
        task("c", "pending", ("a", "b")),
        task("d", "dispatched"),
        task("e"),
    ]
    assert [t.step_id for t in decide.ready(tasks)] == ["b", "e"]
    assert not decide.all_succeeded(tasks)
    assert decide.results_by_step(tasks) == {"a": {"value": "a"}}


def goal(**changes: Any) -> GoalRow:
    base = GoalRow(
        goal_id="g",
        text="t",
        input={},
        status="running",
        max_steps=5,
        max_tokens=None,
        budget_usd=None,
        deadline_at=None,
        plan_version=1,
        steps_used=0,
        tokens=0,
        cost_usd=0.0,
        submitted_at=datetime.now(UTC),
    )
    return GoalRow(**(base.__dict__ | changes))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, None),
        ({"steps_used": 4}, None),
        ({"steps_used": 5}, "budget_steps"),
        ({"max_tokens": 100, "tokens": 100}, "budget_tokens"),
        ({"budget_usd": 0.5, "cost_usd": 0.5}, "budget_cost"),
        ({"deadline_at": datetime.now(UTC) - timedelta(seconds=1)}, "deadline"),
    ],
)
def test_budgets_are_checked_before_each_dispatch(
    changes: dict[str, Any], expected: str | None
) -> None:
    problem = decide.budget_problem(goal(**changes), datetime.now(UTC))
    assert (problem[0] if problem else None) == expected
