"""The live progress of ``mesh submit --wait`` and the demo tells a goal in the order it
happened: steps that moved between two looks by their times, and the goal's end last."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agents.cli_agents import Progress
from agents.client import GoalStatus, TaskStatus

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


def task(step: str, status: str, finished_s: float | None) -> TaskStatus:
    finished = T0 + timedelta(seconds=finished_s) if finished_s is not None else None
    return TaskStatus(step, "echo", status, 1, T0, finished, 0, 0.0)


def test_steps_are_told_by_their_times_and_the_goal_ends_last(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = Progress()
    progress.show(GoalStatus("g", "running", tasks=(task("a", "dispatched", None),)))
    # Between two looks: b, then c (listed first), finished, and the goal completed.
    progress.show(
        GoalStatus(
            "g",
            "completed",
            tasks=(task("c", "succeeded", 3), task("a", "succeeded", 1), task("b", "succeeded", 2)),
        )
    )
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [words[:2] for words in lines] == [
        ["goal", "running"],
        ["dispatched", "a"],
        ["succeeded", "a"],
        ["succeeded", "b"],
        ["succeeded", "c"],
        ["goal", "completed"],
    ]
