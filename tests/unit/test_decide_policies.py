"""The decider's policies, each driven through events: retries and backoff, infrastructure
losses, escalations and their answers, re-plans, budgets and the deadline, cancellation, early
termination, and outcomes or verdicts that come late or twice."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from agents import events as ev
from agents.enums import Decision, GoalStatus, TaskKind, TaskStatus, TimerKind
from agents.planner.budget import budget_problem
from agents.planner.changes import (
    Decided,
    EscalationClosed,
    EscalationOpened,
    PlanAdded,
    PlanRefused,
    RaiseCancelFlag,
    Refused,
    TimerFired,
    VerdictAdded,
)
from agents.planner.decide import decide
from agents.planner.keys import action_fence
from agents.planner.retry import Limits
from agents.tools.base import HUMAN_RETRY, Registry, RetryPolicy
from agents.tools.builtin import BUILTIN_TOOLS
from agents.tools.onboarding import ONBOARDING_TOOLS
from tests.unit.test_decide import (
    ARGS,
    GOAL,
    ONBOARDING,
    REGISTRY,
    T0,
    Sim,
    chain,
    draft,
    keys_of,
    ref,
    step,
    steps_of,
)

pytestmark = pytest.mark.unit

FLAKY = REGISTRY.get("flaky").retry
"""flaky's policy: 4 attempts, 2 s doubling up to 30 s, half jitter."""

STRICT = replace(
    REGISTRY.get("flaky"),
    name="strict",
    retry=RetryPolicy(max_attempts=2, initial_delay_s=1.0, escalate_when_exhausted=False),
)
"""A tool whose step fails for good, instead of escalating, when its retries run out."""

WITH_STRICT = Registry((*ONBOARDING_TOOLS, *BUILTIN_TOOLS, STRICT))


def usage(tokens: int = 0, cost: float = 0.0) -> ev.Usage:
    return ev.Usage(input_tokens=tokens, cost_usd=cost)


# -- retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.99])
def test_retries_back_off_exponentially_with_jitter(draw: float) -> None:
    sim = Sim(chain("flaky"), draw=draw)
    sim.start()
    for used in (1, 2, 3):
        now = sim.now
        out = sim.lost("s1", "transient", f"attempt {used} failed")
        (timer,) = out.timers(TimerKind.RETRY)
        assert timer.due_at == now + timedelta(seconds=FLAKY.delay(used, draw))
        assert timer.task_id == f"{GOAL}.1.s1"
        assert timer.payload["attempt"] == used
        assert sim.status_of("s1") is TaskStatus.WAITING_RETRY
        assert not out.assigned  # the timer sends it, not the verdict
        (again,) = sim.fire_retry("s1").assigned
        assert again.attempt == used + 1
        assert again.fence == action_fence(1, used + 1)


def test_the_backoff_grows_then_stops_at_the_policy_s_ceiling() -> None:
    delays = [FLAKY.delay(n, 0.0) for n in range(1, 7)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert FLAKY.delay(1, 0.99) == pytest.approx(2.0 * (1 - 0.5 * 0.99))


def test_a_retry_timer_for_an_attempt_that_is_not_waiting_does_nothing() -> None:
    sim = Sim(chain("flaky"))
    sim.start()
    sim.lost("s1")
    timer = sim.last_timer()
    stale = TimerFired(
        GOAL, TimerKind.RETRY, timer.task_id, payload={**timer.payload, "attempt": 0}
    )
    assert sim.feed(stale).nothing
    sim.fire_retry("s1")
    assert sim.fire_retry("s1").nothing  # fired twice: the step is no longer waiting


def test_exhausted_retries_escalate_to_a_human() -> None:
    sim = Sim(chain("flaky"))
    sim.start()
    for _ in range(FLAKY.max_attempts - 1):
        sim.retry("s1")
    out = sim.lost("s1", "transient", "still down")
    assert sim.now > T0  # the retries' timers moved the clock
    (raised,) = out.published(ev.EscalationRaised)
    assert raised.task_id == f"{GOAL}.1.s1"
    assert "failed 4 time(s)" in raised.reason
    assert raised.options == ["approve", "retry", "abort", "set"]
    assert raised.default_action == "abort"
    assert raised.expires_at == sim.now + timedelta(seconds=Limits().escalation_ttl_s)
    assert raised.evidence["category"] == "transient"
    assert raised.evidence["attempt"] == 4
    (expiry,) = out.timers(TimerKind.ESCALATION_EXPIRY)
    assert (expiry.escalation_id, expiry.due_at) == (raised.escalation_id, raised.expires_at)
    assert [c.raised for c in out.changes if isinstance(c, EscalationOpened)] == [raised]
    assert sim.status() is GoalStatus.WAITING_HUMAN
    assert sim.status_of("s1") is TaskStatus.WAITING_HUMAN
    assert sim.st.goal.escalations == {raised.escalation_id: f"{GOAL}.1.s1"}
    assert not out.timers(TimerKind.RETRY)


def test_exhausted_retries_fail_the_goal_when_the_tool_says_so() -> None:
    sim = Sim(draft(step("s1", "strict", value=1)), registry=WITH_STRICT)
    sim.start()
    sim.retry("s1")
    out = sim.lost("s1")
    assert not out.published(ev.EscalationRaised)
    done = sim.failed()
    assert done.category == "retries_exhausted"
    assert sim.status() is GoalStatus.FAILED
    assert sim.status_of("s1") is TaskStatus.FAILED


# -- infrastructure losses -----------------------------------------------------------------------


def test_infrastructure_losses_have_their_own_budget_key_and_backoff() -> None:
    limits = Limits(infra_retries=3)
    sim = Sim(chain("flaky"), limits=limits, draw=0.25)
    (first,) = sim.start(max_steps=1).assigned
    fences = [first.fence]
    for loss in (1, 2, 3):
        now = sim.now
        out = sim.lost("s1", "lease_expired", "the lease expired")
        assert sim.st.goal.steps_used == 0  # a lost attempt is not the tool's work
        (timer,) = out.timers(TimerKind.RETRY)
        assert timer.due_at == now + timedelta(seconds=limits.infra_backoff.delay(loss, 0.25))
        (again,) = sim.fire_retry("s1").assigned
        assert again.idempotency_key == first.idempotency_key
        fences.append(again.fence)
    assert fences == sorted(set(fences))  # each attempt fences out the ones before it
    task = sim.task("s1")
    assert (task.attempt, task.floor, task.infra_losses) == (4, 3, 3)
    # the lost attempts may have acted
    assert [e.key for e in task.effects] == [first.idempotency_key]


def test_infrastructure_losses_do_not_use_the_tool_s_attempts() -> None:
    sim = Sim(chain("flaky"), limits=Limits(infra_retries=5))
    sim.start()
    for _ in range(5):
        sim.retry("s1", "lease_expired", "lost")
    for _ in range(FLAKY.max_attempts - 1):  # the tool still has all its attempts
        sim.retry("s1", "transient")
    assert not sim.escalations()
    sim.lost("s1", "transient")
    assert len(sim.escalations()) == 1


def test_exhausting_the_infrastructure_budget_escalates() -> None:
    sim = Sim(chain("flaky"), limits=Limits(infra_retries=2))
    sim.start()
    sim.retry("s1", "lease_expired")
    sim.retry("s1", "lease_expired")
    out = sim.lost("s1", "lease_expired", "the lease expired")
    (raised,) = out.published(ev.EscalationRaised)
    assert "lost 3 attempts" in raised.reason
    assert sim.status() is GoalStatus.WAITING_HUMAN


# -- escalations and their answers ---------------------------------------------------------------


def escalated(plan: Any = None, **limits: Any) -> Sim:
    """A goal whose step s1 (of a two-step chain by default) waits for a human."""
    sim = Sim(plan or chain("create_organisation", "echo"), limits=Limits(**limits))
    sim.start()
    sim.complete("s1")
    sim.judge("s1", Decision.ESCALATE, "low confidence", confidence=0.2)
    assert sim.status() is GoalStatus.WAITING_HUMAN
    return sim


def test_approve_makes_the_step_succeed_and_the_goal_go_on() -> None:
    sim = escalated()
    out = sim.resolve("approve")
    assert sim.status_of("s1") is TaskStatus.SUCCEEDED
    assert sim.task("s1").result is not None
    assert steps_of(out.assigned) == ["s2"]
    assert sim.status() is GoalStatus.RUNNING
    assert not sim.st.goal.escalations
    (closed,) = [c for c in out.changes if isinstance(c, EscalationClosed)]
    assert (closed.status, closed.action, closed.by) == ("resolved", "approve", "ops")


@pytest.mark.parametrize(
    ("action", "values", "same_key"),
    [("retry", {}, True), ("set", {"slug": "acme-two"}, False)],
)
def test_retry_and_set_run_the_step_again_at_once(
    action: str, values: dict[str, Any], same_key: bool
) -> None:
    sim = escalated()
    first = sim.task("s1").key
    out = sim.resolve(action, values)
    (again,) = out.assigned
    assert again.attempt == 2
    assert (again.idempotency_key == first) is same_key
    assert again.arguments == {**ARGS["create_organisation"], **values}
    assert sim.status() is GoalStatus.RUNNING
    assert not out.timers()


def test_a_human_retry_gives_the_tool_its_attempts_back() -> None:
    sim = Sim(chain("flaky"))
    sim.start()
    for _ in range(FLAKY.max_attempts - 1):
        sim.retry("s1")
    sim.lost("s1")
    sim.resolve("retry")
    for _ in range(FLAKY.max_attempts - 1):
        sim.retry("s1")
    assert len(sim.escalations()) == 1
    sim.lost("s1")
    assert len(sim.escalations()) == 2


def test_abort_ends_the_goal_and_rolls_back() -> None:
    sim = escalated()
    out = sim.resolve("abort")
    (undo,) = out.undo
    assert undo.undoes == sim.task("s1").key
    assert sim.status() is GoalStatus.COMPENSATING
    sim.undo_all()
    done = sim.failed()
    assert (done.category, done.compensated) == ("aborted", ["s1"])


@pytest.mark.parametrize(
    ("default", "status", "dispatched"),
    [
        ("abort", TaskStatus.FAILED, []),
        ("approve", TaskStatus.SUCCEEDED, ["s2"]),
        ("retry", TaskStatus.DISPATCHED, ["s1"]),
    ],
)
def test_an_unanswered_escalation_takes_the_default_action_when_it_expires(
    default: str, status: TaskStatus, dispatched: list[str]
) -> None:
    sim = escalated(escalation_default=default)
    (raised,) = sim.escalations()
    assert raised.default_action == default
    out = sim.expire()
    (closed,) = [c for c in out.changes if isinstance(c, EscalationClosed)]
    assert (closed.status, closed.action, closed.by) == ("expired", default, "expiry")
    assert sim.status_of("s1") is status
    assert steps_of(out.actions) == dispatched
    assert not sim.st.goal.escalations


def test_a_second_answer_or_a_late_expiry_changes_nothing() -> None:
    sim = escalated()
    sim.resolve("approve")
    before = sim.st
    assert sim.resolve("abort").nothing
    assert sim.expire().nothing
    assert sim.st == before


def test_an_answer_to_another_goal_s_escalation_changes_nothing() -> None:
    other = escalated()
    theirs = other.escalations()[0].escalation_id
    sim = Sim(chain("create_organisation", "echo"), goal_id="goal-2")
    sim.start()
    sim.complete("s1")
    sim.judge("s1", Decision.ESCALATE, "unsure")
    before = sim.st
    assert sim.resolve("abort", escalation_id=theirs).nothing
    assert sim.expire(theirs).nothing
    assert sim.st == before


def test_other_steps_go_on_while_one_waits_for_a_human() -> None:
    sim = Sim(draft(step("a", value=1), step("b", value=2), step("c", deps=["b"], value=3)))
    sim.start()
    sim.complete("a")
    sim.judge("a", Decision.ESCALATE, "unsure")
    out = sim.ok("b")
    assert steps_of(out.assigned) == ["c"]
    assert sim.status() is GoalStatus.WAITING_HUMAN
    sim.ok("c")
    assert sim.ended() is None  # a still waits
    sim.resolve("approve")
    assert sim.status() is GoalStatus.COMPLETED


def test_approving_a_failed_step_whose_result_is_referenced_does_not_crash_the_decider() -> None:
    sim = Sim(ONBOARDING)
    sim.start()
    sim.ok("validate")
    sim.fail("organisation", "permanent", "the slug is taken")
    sim.judge("organisation", Decision.ESCALATE, "the slug is taken")
    try:
        sim.resolve("approve")
    except KeyError as exc:
        raise AssertionError(f"decide raised KeyError {exc}") from exc
    assert sim.st.goal.ending is not None or sim.in_flight()


# -- re-plans ------------------------------------------------------------------------------------


def test_a_replan_asks_for_a_plan_with_what_failed_and_what_is_kept() -> None:
    plan = draft(
        step("a", "create_organisation", **ARGS["create_organisation"]),
        step("b", value=2),
        step("c", "notify_team_channel", text="hi"),
        step("d", deps=["a", "b", "c"], value=4),
    )
    sim = Sim(plan)
    sim.start()
    sim.ok("a")
    sim.fail("c", "permanent", "no such channel")
    out = sim.judge("c", Decision.REPLAN, "the channel does not exist")
    (ask,) = out.asked
    assert ask.goal_id == GOAL
    assert "failed at step c (notify_team_channel)" in ask.context
    assert "the channel does not exist" in ask.context
    assert "Completed steps, kept as they are: a." in ask.context
    (verdict,) = [c.verdict for c in out.changes if isinstance(c, VerdictAdded)]
    assert ask.cause_id == verdict.event_id
    assert sim.status_of("c") is TaskStatus.FAILED
    assert sim.status_of("b") is TaskStatus.DISPATCHED  # the old plan's other steps go on


def test_a_new_plan_version_carries_completed_steps_and_supersedes_the_rest() -> None:
    first = draft(
        step("a", "create_organisation", **ARGS["create_organisation"]),
        step("b", value=2),
        step("c", "notify_team_channel", text="hi"),
        step("d", deps=["a", "b", "c"], value=4),
    )
    second = draft(
        step("a", "create_organisation", **ARGS["create_organisation"]),
        step("b", value=2),
        step("e", "echo", value=5),
        step("d", deps=["a", "b", "e"], value=ref("a.org_id")),
    )
    sim = Sim(first, second)
    sim.start()
    sim.ok("a")
    sim.fail("c", "permanent", "no such channel")
    out = sim.judge("c", Decision.REPLAN, "the channel does not exist")
    assert sim.st.goal.plan_version == 2
    assert sim.st.goal.replans == 1
    added = [c for c in out.changes if isinstance(c, PlanAdded)]
    assert [(p.version, p.reason) for p in added] == [(2, "re-plan")]
    old = {s: sim.status_of(s, version=1) for s in "abcd"}
    assert old == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.SUPERSEDED,  # it was in flight
        "c": TaskStatus.FAILED,
        "d": TaskStatus.SUPERSEDED,
    }
    assert sim.status_of("a") is TaskStatus.SUCCEEDED  # carried over, not run again
    assert sim.task("a").result == sim.task("a", version=1).result
    assert sim.task("a").key == sim.task("a", version=1).key
    assert sorted(steps_of(out.assigned)) == ["b", "e"]  # b runs again in the new version
    b = next(a for a in out.assigned if a.step_id == "b")
    assert (b.plan_version, b.attempt, b.fence) == (2, 1, action_fence(2, 1))
    assert b.fence > action_fence(1, 1)
    sim.ok("b", "e")
    (d,) = [t for t in sim.in_flight() if t.step_id == "d"]
    assert d.current is not None
    assert d.current.arguments == {"value": sim.task("a").result["org_id"]}  # type: ignore[index]
    sim.ok("d")
    assert sim.status() is GoalStatus.COMPLETED


def test_a_plan_that_carries_every_step_completes_the_goal_at_once() -> None:
    first = draft(step("a", value=1), step("b", value=2))
    sim = Sim(first, draft(step("a", value=1)))
    sim.start()
    sim.ok("a")
    sim.fail("b", "permanent")
    out = sim.judge("b", Decision.REPLAN)
    assert not out.assigned
    assert out.published(ev.GoalCompleted)


@pytest.mark.parametrize("max_replans", [0, 1])
def test_replans_exhausted_end_the_goal(max_replans: int) -> None:
    plans = [draft(step(f"v{n}", value=n)) for n in range(1, max_replans + 2)]
    sim = Sim(*plans)
    sim.start(max_replans=max_replans)
    for n in range(1, max_replans + 1):
        sim.fail(f"v{n}", "permanent")
        assert sim.judge(f"v{n}", Decision.REPLAN).asked
    last = f"v{max_replans + 1}"
    sim.fail(last, "permanent")
    out = sim.judge(last, Decision.REPLAN)
    assert not out.asked
    assert sim.failed().category == "replans_exhausted"
    assert sim.st.goal.plan_version == max_replans + 1


def test_a_refused_plan_ends_the_goal() -> None:
    sim = Sim()
    sim.submit()
    out = sim.feed(PlanRefused(GOAL, "invalid_plan", "no such tool", usage(5), "ask"))
    assert not out.assigned
    assert sim.failed().category == "invalid_plan"
    assert sim.st.goal.tokens == 5


def test_replans_asked_while_one_is_pending_do_not_exceed_max_replans() -> None:
    sim = Sim(draft(step("a", value=1), step("b", value=2)))
    sim.submit(max_replans=1)
    sim.fail("a", "permanent")
    sim.judge("a", Decision.REPLAN)
    sim.fail("b", "permanent")
    sim.judge("b", Decision.REPLAN)
    sim.plan(draft(step("x", value=1)), replaces=1)
    sim.plan(draft(step("y", value=2)), replaces=1)  # asked of version 1, which x replaced
    assert sim.st.goal.replans <= sim.st.goal.max_replans


# -- budgets -------------------------------------------------------------------------------------


def test_the_step_that_would_exceed_the_step_budget_is_refused() -> None:
    sim = Sim(chain("echo", "echo", "echo"))
    sim.start(max_steps=2)
    sim.ok("s1")
    out = sim.ok("s2")
    assert not out.actions
    assert sim.status_of("s3") is TaskStatus.CANCELLED
    assert sim.st.goal.steps_used == 2
    assert sim.failed().category == "budget_steps"


def test_parallel_steps_stop_at_the_step_budget_and_what_ran_is_undone() -> None:
    sim = Sim(
        draft(
            step("a", "create_organisation", **ARGS["create_organisation"]),
            step("b", "notify_team_channel", text="hi"),
            step("c", value=1),
        )
    )
    out = sim.start(max_steps=2)
    assert steps_of(out.actions) == ["a", "b"]
    assert sim.st.goal.steps_used == 2
    assert sim.st.goal.ending is not None
    assert sim.st.goal.ending.category == "budget_steps"
    assert {t.undoes for t in sim.compensations()} == {sim.task("a").key, sim.task("b").key}


def test_retries_count_against_the_step_budget() -> None:
    sim = Sim(chain("flaky"))
    sim.start(max_steps=2)
    sim.retry("s1")
    sim.lost("s1")
    out = sim.fire_retry("s1")
    assert not out.actions
    assert sim.failed().category == "budget_steps"


@pytest.mark.parametrize(
    ("fields", "spend", "category"),
    [
        ({"max_tokens": 100}, usage(tokens=60), "budget_tokens"),
        ({"budget_usd": 1.0}, usage(cost=0.6), "budget_cost"),
    ],
)
def test_a_token_or_cost_budget_runs_one_step_at_a_time_and_overshoots_by_one_at_most(
    fields: dict[str, Any], spend: ev.Usage, category: str
) -> None:
    sim = Sim(draft(step("a", value=1), step("b", value=2), step("c", value=3)))
    out = sim.start(**fields)
    assert steps_of(out.actions) == ["a"]
    assert sim.status_of("b") is TaskStatus.PENDING
    assert steps_of(sim.ok("a", usage=spend).actions) == ["b"]
    out = sim.ok("b", usage=spend)
    assert not out.actions
    done = sim.failed()
    assert done.category == category
    assert done.usage.input_tokens == 2 * spend.input_tokens
    assert done.usage.cost_usd == pytest.approx(2 * spend.cost_usd)


def test_a_step_waiting_for_a_retry_does_not_hold_a_one_at_a_time_goal() -> None:
    sim = Sim(draft(step("a", "flaky", value=1), step("b", value=2)))
    sim.start(max_tokens=1000)
    sim.lost("a")
    assert [t.step_id for t in sim.in_flight()] == ["b"]  # b goes on while a waits
    assert not sim.fire_retry("a").actions  # still one at a time: a waits for b
    assert steps_of(sim.ok("b").actions) == ["a"]
    sim.ok("a")
    assert sim.status() is GoalStatus.COMPLETED


def test_a_step_waiting_for_a_human_does_not_hold_a_one_at_a_time_goal() -> None:
    sim = Sim(draft(step("a", value=1), step("b", value=2)))
    sim.start(max_tokens=1000)
    sim.complete("a")
    out = sim.judge("a", Decision.ESCALATE, "unsure")
    assert steps_of(out.actions) == ["b"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, None),
        ({"steps_used": 4}, None),
        ({"steps_used": 5}, "budget_steps"),
        ({"max_tokens": 100, "input_tokens": 60, "output_tokens": 40}, "budget_tokens"),
        ({"max_tokens": 100, "input_tokens": 99}, None),
        ({"budget_usd": 0.5, "cost_usd": 0.5}, "budget_cost"),
        ({"deadline_at": T0}, "deadline"),
        ({"deadline_at": T0 + timedelta(seconds=1)}, None),
    ],
)
def test_budget_problems_are_named(changes: dict[str, Any], expected: str | None) -> None:
    sim = Sim(chain("echo"))
    sim.start(max_steps=5)
    goal = replace(sim.st.goal, **changes)
    problem = budget_problem(goal, T0)
    assert (problem[0] if problem else None) == expected


def test_a_deadline_passed_at_dispatch_ends_the_goal() -> None:
    sim = Sim(chain("echo", "echo"))
    sim.start(deadline_at=T0 + timedelta(minutes=1))
    sim.now = T0 + timedelta(minutes=2)
    out = sim.ok("s1")
    assert not out.actions
    assert sim.failed().category == "deadline"


@pytest.mark.parametrize("waiting_on", ["human", "step", "retry", "plan"])
def test_the_deadline_timer_ends_the_goal_whatever_it_waits_on(waiting_on: str) -> None:
    sim = Sim(chain("create_organisation", "flaky"))
    sim.start(deadline_at=T0 + timedelta(minutes=5))
    if waiting_on == "human":
        sim.complete("s1")
        sim.judge("s1", Decision.ESCALATE, "unsure")
    elif waiting_on == "retry":
        sim.lost("s1", "timeout")
    elif waiting_on == "plan":
        sim.fail("s1", "permanent")
        sim.judge("s1", Decision.REPLAN)
        assert sim.history.asked
    key = sim.task("s1").key
    sim.now = T0 + timedelta(minutes=5)
    out = sim.fire_deadline()
    assert not out.actions
    assert sim.st.goal.ending is not None
    assert sim.st.goal.ending.category == "deadline"
    assert not sim.st.goal.escalations
    if waiting_on == "plan":  # the only attempt failed: nothing to undo
        assert sim.failed().category == "deadline"
        return
    assert [a.undoes for a in out.undo] == [key]  # s1 may have acted
    assert sim.status_of("s1") is TaskStatus.CANCELLED
    if waiting_on == "human":
        (closed,) = [c for c in out.changes if isinstance(c, EscalationClosed)]
        assert closed.action == "superseded"
    sim.undo_all()
    assert sim.failed().category == "deadline"
    assert sim.status() is GoalStatus.FAILED


def test_a_deadline_timer_after_the_goal_ended_does_nothing() -> None:
    sim = Sim(chain("echo"))
    sim.start(deadline_at=T0 + timedelta(minutes=5))
    sim.ok("s1")
    assert sim.fire_deadline().nothing


# -- cancellation --------------------------------------------------------------------------------


def test_a_cancelled_goal_raises_the_flag_rolls_back_and_ends_cancelled() -> None:
    sim = Sim(ONBOARDING)
    sim.start()
    sim.ok("validate", "organisation")
    out = sim.cancel("no longer needed")
    assert RaiseCancelFlag(GOAL) in out.commands
    assert not out.actions
    assert sorted(steps_of(out.undo)) in (["undo_billing"], ["undo_infrastructure"])
    assert {sim.status_of(s) for s in ("infrastructure", "billing", "email")} == {
        TaskStatus.CANCELLED
    }
    assert sim.status() is GoalStatus.COMPENSATING
    sim.undo_all()
    done = sim.failed()
    assert done.category == "cancelled"
    assert done.message == "no longer needed"
    assert done.compensated[-1] == "organisation"
    assert sorted(done.compensated) == ["billing", "infrastructure", "organisation"]
    assert sim.status() is GoalStatus.CANCELLED


def test_nothing_is_dispatched_after_a_cancel() -> None:
    sim = Sim(chain("flaky", "echo"))
    sim.start()
    sim.lost("s1")
    timer = sim.last_timer()
    sim.cancel()
    assert sim.status() is GoalStatus.CANCELLED  # nothing to undo
    later = [
        sim.feed(TimerFired(GOAL, TimerKind.RETRY, timer.task_id, payload=timer.payload)),
        sim.complete("s1", attempt=1),
        sim.judge("s1", Decision.ACCEPT, attempt=1),
        sim.cancel(),
        sim.fire_deadline(),
    ]
    assert all(not out.assigned for out in later)
    assert len(sim.history.published(ev.GoalFailed)) == 1


def test_a_goal_cancelled_before_its_plan_arrives_ignores_the_plan() -> None:
    sim = Sim()
    sim.submit()
    sim.cancel()
    assert sim.status() is GoalStatus.CANCELLED
    out = sim.plan(chain("echo"))
    assert not out.assigned
    assert sim.st.goal.plan_version == 0


# -- early termination ---------------------------------------------------------------------------


def test_the_same_failure_repeated_ends_the_goal() -> None:
    sim = Sim(
        draft(step("a", "flaky", value=1), step("b", "flaky", value=2)),
        limits=Limits(same_failure=3),
    )
    sim.start()
    sim.retry("a", "transient", "the service is down")
    sim.retry("b", "transient", "the service is down")
    out = sim.lost("a", "transient", "the service is down")
    assert not out.timers(TimerKind.RETRY)
    assert sim.st.goal.ending is not None
    done = sim.failed()
    assert done.category == "repeated_failure"
    assert "3 times" in done.message


def test_different_failures_do_not_count_as_the_same() -> None:
    sim = Sim(chain("flaky"), limits=Limits(same_failure=2, no_progress=10))
    sim.start()
    sim.retry("s1", "transient", "first")
    sim.retry("s1", "timeout", "second")
    assert sim.ended() is None
    assert sim.st.goal.failures == {"transient: first": 1, "timeout: second": 1}


def test_verdicts_without_an_accept_end_the_goal() -> None:
    sim = Sim(
        draft(step("a", value=1), step("b", "flaky", value=2)),
        limits=Limits(no_progress=3, same_failure=10),
    )
    sim.start()
    sim.complete("b")
    sim.judge("b", Decision.RETRY, "not quite")  # semantic retries: no failure signature
    sim.fire_retry("b")
    sim.complete("b")
    sim.judge("b", Decision.RETRY, "still not")
    assert sim.st.goal.since_accept == 2
    sim.fire_retry("b")
    sim.complete("b")
    out = sim.judge("b", Decision.RETRY, "no")
    assert not out.timers(TimerKind.RETRY)
    assert sim.failed().category == "no_progress"


def test_an_accept_resets_the_progress_count() -> None:
    sim = Sim(
        draft(step("a", value=1), step("b", "flaky", value=2)),
        limits=Limits(no_progress=3),
    )
    sim.start()
    sim.retry("b")
    sim.retry("b")
    sim.ok("a")
    assert sim.st.goal.since_accept == 0
    sim.retry("b")
    sim.retry("b")
    assert sim.ended() is None


# -- inputs the shell could not handle -----------------------------------------------------------


def test_an_input_the_shell_could_not_handle_ends_the_goal_and_rolls_back() -> None:
    sim = Sim(chain("create_organisation", "echo"))
    sim.start()
    sim.ok("s1")
    out = sim.feed(Refused(GOAL, "undecodable", "bad bytes", "cause-1"))
    assert [a.undoes for a in out.undo] == [sim.task("s1").key]
    assert sim.status_of("s2") is TaskStatus.CANCELLED
    sim.undo_all()
    done = sim.failed()
    assert (done.category, done.message) == ("internal_error", "undecodable: bad bytes")


def test_an_input_refused_during_the_rollback_ends_the_goal_without_looping() -> None:
    sim = Sim(chain("create_organisation", "echo"))
    sim.start()
    sim.ok("s1")
    sim.fail("s2", "permanent")
    sim.judge("s2", Decision.FAIL)
    out = sim.feed(Refused(GOAL, "undecodable", "bad bytes"))
    assert not out.assigned
    assert sim.failed().category == "internal_error"
    assert sim.status() is GoalStatus.FAILED


def test_an_input_refused_for_an_unknown_goal_decides_nothing() -> None:
    decided = decide(None, Refused("nobody", "undecodable", "bad"), Sim().context())
    assert decided == Decided(None)


# -- late and duplicate inputs -------------------------------------------------------------------


def test_an_outcome_for_an_older_attempt_changes_nothing() -> None:
    sim = Sim(chain("flaky"))
    sim.start()
    sim.retry("s1")
    before = sim.st
    assert sim.complete("s1", attempt=1).nothing
    assert sim.fail("s1", "timeout", attempt=1).nothing
    assert sim.st == before


def test_a_second_outcome_for_the_same_attempt_changes_nothing() -> None:
    sim = Sim(chain("create_organisation"))
    sim.start()
    sim.complete("s1")
    before = sim.st
    assert sim.complete("s1", {"org_id": "org_other", "slug": "x"}).nothing
    assert sim.fail("s1", "permanent").nothing
    assert sim.st == before


def test_a_verdict_for_an_older_attempt_or_a_second_verdict_changes_nothing() -> None:
    sim = Sim(chain("flaky", "echo"))
    sim.start()
    sim.lost("s1")
    before = sim.st
    assert sim.judge("s1", Decision.ACCEPT).nothing  # the attempt waits for its retry
    sim.fire_retry("s1")
    assert sim.judge("s1", Decision.ACCEPT, attempt=1).nothing
    sim.ok("s1")
    after = sim.st
    assert sim.judge("s1", Decision.FAIL).nothing
    assert sim.st == after
    assert before != after


def test_a_verdict_before_its_outcome_changes_nothing() -> None:
    sim = Sim(chain("echo"))
    sim.start()
    out = sim.judge("s1", Decision.ACCEPT)
    assert out.nothing
    assert sim.status_of("s1") is TaskStatus.DISPATCHED


def test_verdicts_are_recorded_with_their_usage() -> None:
    sim = Sim(chain("echo"))
    sim.start()
    sim.complete("s1")
    out = sim.judge("s1", Decision.ACCEPT, usage=usage(tokens=7))
    (added,) = [c for c in out.changes if isinstance(c, VerdictAdded)]
    assert added.verdict.decision == "accept"
    assert sim.st.goal.tokens == 7


def test_a_late_outcome_of_a_superseded_attempt_is_recorded_without_dispatching() -> None:
    first = draft(step("a", value=1), step("b", value=2))
    sim = Sim(first, draft(step("c", value=3)))
    sim.start()
    sim.fail("b", "permanent")
    sim.judge("b", Decision.REPLAN)
    assert sim.status_of("a", version=1) is TaskStatus.SUPERSEDED
    out = sim.complete("a", version=1)
    assert not out.assigned
    assert sim.status_of("a", version=1) is TaskStatus.SUPERSEDED
    old = sim.task("a", version=1).current
    assert old is not None
    assert old.outcome == "succeeded"
    assert sim.judge("a", Decision.ACCEPT, version=1).nothing


def test_compensations_are_not_actions() -> None:
    sim = Sim(chain("create_organisation", "echo"))
    sim.start()
    sim.ok("s1")
    sim.fail("s2", "permanent")
    sim.judge("s2", Decision.FAIL)
    (undo,) = sim.compensations()
    assert undo.kind is TaskKind.COMPENSATION
    assert undo.pool == REGISTRY.get("delete_organisation").pool
    assert keys_of(sim.history.undo) == [undo.key]


def test_attempts_lost_to_the_infrastructure_do_not_end_a_goal_early() -> None:
    sim = Sim(draft(step("a", "flaky", value=1)), limits=Limits(same_failure=2, no_progress=2))
    sim.start()
    for _ in range(4):
        sim.lost("a", "lease_expired", "the worker stopped heartbeating")
        sim.fire_retry("a")
    assert sim.st.goal.failures == {} and sim.st.goal.since_accept == 0
    sim.ok("a")
    assert sim.status() is GoalStatus.COMPLETED


def test_a_human_s_retry_lost_to_the_infrastructure_is_repeated_with_its_go_ahead() -> None:
    sim = Sim(draft(step("a", "flaky", value=1)))
    sim.start()
    for _ in range(FLAKY.max_attempts - 1):
        sim.lost("a")
        sim.fire_retry("a")
    sim.lost("a")  # the tool's attempts are used up: a human is asked
    assert sim.escalations()
    (asked,) = sim.resolve("retry").actions
    assert asked.feedback is not None and asked.feedback.startswith(HUMAN_RETRY)
    assert sim.st.goal.failures == {}  # the human asked for more tries
    sim.lost("a", "lease_expired", "the worker stopped heartbeating")
    (again,) = sim.fire_retry("a").actions
    assert again.feedback == asked.feedback
    assert again.idempotency_key == asked.idempotency_key
