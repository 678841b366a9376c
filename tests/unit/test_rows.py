"""The planner's rows built and changed without ``__init__`` are the rows ``__init__`` makes."""

from __future__ import annotations

import dataclasses

import pytest

from agents.planner.decide import FIELDS, TaskRow, evolve, row_of

pytestmark = pytest.mark.unit

TASK = TaskRow(
    task_id="g.1.a",
    step_id="a",
    tool="echo",
    arguments={"x": 1},
    depends_on=("b",),
    pool="default",
    status="pending",
    attempt=0,
    idempotency_key="g:a",
    result=None,
)


def test_a_row_from_its_values_equals_the_constructed_one_and_stays_frozen() -> None:
    row = row_of(TaskRow, [getattr(TASK, name) for name in FIELDS[TaskRow]])
    assert row == TASK and repr(row) == repr(TASK)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.status = "succeeded"  # type: ignore[misc]
    with pytest.raises(ValueError):
        row_of(TaskRow, ["too", "few"])


def test_evolve_changes_what_replace_changes_and_refuses_unknown_fields() -> None:
    changed = evolve(TASK, status="dispatched", attempt=1)
    assert changed == dataclasses.replace(TASK, status="dispatched", attempt=1)
    assert TASK.status == "pending" and changed is not TASK
    with pytest.raises(TypeError, match="statsu"):
        evolve(TASK, statsu="dispatched")
