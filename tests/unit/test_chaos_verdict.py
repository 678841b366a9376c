"""The chaos suite's invariants and summary, judged on made-up observations."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from chaos import COMPLETION_TARGET, Effect, Observed, Tally, Violation, summarise
from chaos._scenarios import BY_NAME
from chaos._verdict import EffectRows, judge

pytestmark = pytest.mark.unit

ONCE = EffectRows(rows=1, live=1, most_per_key=1)
UNDONE = EffectRows(rows=1, live=0, most_per_key=1)
TABLES = (Effect.ORGANISATION, Effect.BILLING, Effect.EMAIL, Effect.CHANNEL)


def every(status: str) -> dict[Effect, EffectRows]:
    """Each table's row of a goal that ended with ``status``: live once, or undone."""
    return {kind: ONCE if status == "completed" else UNDONE for kind in TABLES}


def observed(scenario: str, status: str, **overrides: Any) -> Observed:
    """A goal that ended as its scenario says, with what that end leaves, unless overridden."""
    goal = Observed(
        goal_id=f"g-{scenario}-{status}",
        scenario=BY_NAME[scenario],
        slug="chaos-x-0001",
        status=status,
        ended_in_time=True,
        rows=every(status),
        tenant_components=3 if status == "completed" else 0,
        log_ends=(status,),
    )
    return replace(goal, **overrides)


def test_goals_that_end_as_promised_break_nothing() -> None:
    for goal in [
        observed("happy", "completed"),
        observed("infra-partial", "failed"),
        observed("cancel", "cancelled"),
        observed(
            "explicit-plan",
            "completed",
            rows={Effect.ORGANISATION: ONCE, Effect.BILLING: ONCE, Effect.CHANNEL: ONCE},
            tenant_components=0,
        ),
    ]:
        assert judge(goal) == (), goal.scenario.name


def test_a_goal_not_ended_at_the_timeout_is_stuck() -> None:
    goal = observed("happy", "running", ended_in_time=False, log_ends=())
    assert judge(goal) == (Violation.STUCK,)


def test_an_effect_live_twice_or_twice_under_one_key_is_applied_twice() -> None:
    twice = EffectRows(rows=2, live=2, most_per_key=1)
    same_key = EffectRows(rows=2, live=1, most_per_key=2)
    for rows in (twice, same_key):
        goal = observed("happy", "completed", rows=every("completed") | {Effect.BILLING: rows})
        assert Violation.APPLIED_TWICE in judge(goal)


def test_a_rolled_back_goal_with_a_live_effect_left_it_behind() -> None:
    email = every("failed") | {Effect.EMAIL: ONCE}
    assert judge(observed("billing-permanent", "failed", rows=email)) == (Violation.LEFT_BEHIND,)
    assert judge(observed("cancel", "cancelled", tenant_components=2)) == (Violation.LEFT_BEHIND,)


def test_a_goal_whose_policy_keeps_its_effects_leaves_nothing_behind() -> None:
    goal = observed("infra-partial", "failed", compensation_policy="none", tenant_components=2)
    assert judge(goal) == ()


def test_a_completed_goal_needs_each_effect_of_its_plan_once_and_no_other() -> None:
    no_email = observed("happy", "completed", rows=every("completed") | {Effect.EMAIL: UNDONE})
    assert judge(no_email) == (Violation.MISSING_EFFECTS,)
    assert judge(observed("happy", "completed", tenant_components=2)) == (
        Violation.MISSING_EFFECTS,
    )
    extra = observed(
        "replan",
        "completed",
        rows={Effect.ORGANISATION: ONCE, Effect.CHANNEL: ONCE, Effect.EMAIL: ONCE},
        tenant_components=0,
    )
    assert judge(extra) == (Violation.LEFT_BEHIND,)


@pytest.mark.parametrize(
    ("status", "log_ends"),
    [
        ("completed", ()),
        ("completed", ("failed",)),
        ("completed", ("completed", "completed")),  # two terminal events with distinct ids
        ("cancelled", ("failed",)),
        ("running", ("completed",)),
    ],
)
def test_the_ledger_and_the_log_must_tell_the_same_end_once(
    status: str, log_ends: tuple[str, ...]
) -> None:
    goal = observed("happy", status, log_ends=log_ends)
    assert Violation.DISAGREEMENT in judge(goal)


def test_a_goal_meant_to_fail_that_completed_ended_wrong() -> None:
    goal = observed("billing-permanent", "completed")
    assert judge(goal) == (Violation.WRONG_END,)
    # A goal meant to complete that failed counts against the completion share instead.
    assert judge(observed("happy", "failed")) == ()


def test_the_summary_counts_goals_per_violation_and_judges_the_run() -> None:
    goals = [observed("happy", "completed") for _ in range(99)]
    goals += [observed("infra-partial", "failed", tenant_components=2)]
    report = summarise(goals, Tally(kills=81, pauses=14, unexpected_escalations=2), seed=5)
    assert report.violations[Violation.LEFT_BEHIND] == 1
    assert not report.ok
    assert report.line() == (
        "chaos: 100 goals (99 should complete: 99 did), 81 kills, 14 pauses, 0 crashes, "
        "0 stuck, 0 applied twice, 1 left behind, 0 missing effects, "
        "0 ledger/log disagreements, 0 wrong ends, 2 unexpected escalations -> FAILED"
    )
    assert report.summary()["violations"]["left behind"] == 1
    assert report.as_json()["details"][-1]["violations"] == ("left behind",)


def test_the_run_passes_only_at_the_completion_target() -> None:
    done = [observed("happy", "completed") for _ in range(99)]
    assert summarise([*done, observed("happy", "completed")], Tally()).ok
    short = summarise([*done, observed("happy", "failed")], Tally())
    assert short.completion_share == 0.99 >= COMPLETION_TARGET and short.ok
    shorter = summarise([*done[:98], *[observed("happy", "failed")] * 2], Tally())
    assert not shorter.ok
    assert "(100 should complete: 98 did)" in shorter.line() and shorter.line().endswith("FAILED")


def test_a_run_with_no_goal_meant_to_complete_is_judged_on_the_rest() -> None:
    report = summarise([observed("cancel", "cancelled")], Tally())
    assert report.ok and report.completion_share == 1.0
