"""The chaos suite's scenarios: the mix, the goals they submit, and what each one expects."""

from __future__ import annotations

from collections import Counter

import pytest

from agents.engines.base import PlanDraft
from agents.engines.offline import explicit_plan
from agents.tools.onboarding import Simulate, notify_team_channel
from chaos import SCENARIOS, Effect, End, Scenario, mix
from chaos._campaign import Goal, answer_for, should_cancel
from chaos._observe import LedgerGoal
from chaos._scenarios import BY_NAME, ONBOARDING_EFFECTS, Customer, longest_delay_s

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("goals", [len(SCENARIOS), len(SCENARIOS) + 1, 40, 300])
def test_every_scenario_runs_once_there_are_enough_goals(goals: int) -> None:
    picked = mix(goals, seed=7)
    assert len(picked) == goals
    assert {s.name for s in picked} == {s.name for s in SCENARIOS}


def test_fewer_goals_than_scenarios_take_the_first_ones() -> None:
    assert sorted(s.name for s in mix(3, seed=1)) == sorted(s.name for s in SCENARIOS[:3])


def test_the_mix_follows_the_weights_and_the_seed() -> None:
    counts = Counter(s.name for s in mix(300, seed=3))
    assert counts["happy"] > counts["billing-flaky"] > counts["cancel"] >= 1
    should_complete = sum(n for name, n in counts.items() if BY_NAME[name].expect == End.COMPLETED)
    assert 0.6 < should_complete / 300 < 0.8
    assert mix(300, seed=3) == mix(300, seed=3)
    assert mix(300, seed=3) != mix(300, seed=4)


def test_customers_are_unique_per_run_and_their_slugs_valid() -> None:
    customers = [Customer.numbered("ab12cd34", n) for n in range(300)]
    assert len({c.slug for c in customers}) == len({c.company for c in customers}) == 300
    assert all(len(c.slug) <= 40 and c.slug.islower() for c in customers)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_every_goal_is_one_the_offline_engine_and_the_tools_accept(scenario: Scenario) -> None:
    request = scenario.goal(Customer.numbered("ab12cd34", 5))
    for switches in request.input["simulate"].values():
        Simulate.model_validate(switches)  # a typo would quietly run the happy path
    if request.input.get("playbook") == "steps":
        assert isinstance(explicit_plan(request.input), PlanDraft)
        assert isinstance(explicit_plan(request.input, replanning=True), PlanDraft)
    else:
        assert "onboard" in request.text
        assert request.input["company"] == "Chaos ab12cd34 0005"


def test_what_each_scenario_expects() -> None:
    expect = {s.name: s.expect for s in SCENARIOS}
    assert expect == {
        "happy": End.COMPLETED,
        "billing-flaky": End.COMPLETED,
        "explicit-plan": End.COMPLETED,
        "replan": End.COMPLETED,
        "billing-down-retry": End.COMPLETED,
        "infra-partial": End.FAILED,
        "billing-permanent": End.FAILED,
        "budget-exceeded": End.FAILED,
        "billing-down-abort": End.FAILED,
        "slow-tool": End.FAILED,
        "cancel": End.CANCELLED,
    }
    assert BY_NAME["happy"].effects == ONBOARDING_EFFECTS
    assert BY_NAME["explicit-plan"].effects == {Effect.ORGANISATION, Effect.BILLING, Effect.CHANNEL}
    assert BY_NAME["replan"].effects == {Effect.ORGANISATION, Effect.CHANNEL}


def test_the_replan_fallback_avoids_the_failing_tool() -> None:
    request = BY_NAME["replan"].goal(Customer.numbered("ab12cd34", 1))
    failing = set(request.input["simulate"])
    assert failing & {s["tool"] for s in request.input["steps"]}
    assert not failing & {s["tool"] for s in request.input["fallback_steps"]}


def test_the_slow_tool_outlasts_its_timeout() -> None:
    delay = BY_NAME["slow-tool"].simulate["notify_team_channel"]["delay_s"]
    assert delay > notify_team_channel.timeout_s
    assert longest_delay_s() == delay


def test_escalations_are_answered_as_the_scenario_says_and_others_with_retry() -> None:
    assert answer_for(BY_NAME["billing-down-retry"], "billing") == ("retry", True)
    assert answer_for(BY_NAME["billing-down-abort"], "billing") == ("abort", True)
    assert answer_for(BY_NAME["slow-tool"], "notify") == ("abort", True)
    assert answer_for(BY_NAME["billing-down-abort"], "undo_billing") == ("retry", False)
    assert answer_for(BY_NAME["happy"], None) == ("retry", False)


def test_the_cancel_comes_once_the_named_step_succeeded_and_only_once() -> None:
    goal = Goal(BY_NAME["cancel"], Customer.numbered("ab12cd34", 1), goal_id="g", status="running")
    before = LedgerGoal("running", "all", frozenset({"validate"}))
    after = LedgerGoal("running", "all", frozenset({"validate", "organisation"}))
    assert not should_cancel(goal, before)
    assert should_cancel(goal, after)
    goal.cancelled = True
    assert not should_cancel(goal, after)
    happy = Goal(BY_NAME["happy"], Customer.numbered("ab12cd34", 2), goal_id="h")
    assert not should_cancel(happy, after)
