"""Rollback, as the decider runs it: which effects are undone (undoable steps with a succeeded or
unknown attempt, in every plan version), in which order (reverse dependency order, one at a
time), under which key and fence, per compensation policy; compensations' retries and
escalations; and how the goal reports the rollback when it ends."""

from __future__ import annotations

from typing import Any

import pytest

from agents import events as ev
from agents.enums import Decision, GoalStatus, TaskStatus, TimerKind
from agents.planner.keys import COMPENSATION_FENCE
from tests.unit.test_decide import (
    ARGS,
    ONBOARDING,
    REGISTRY,
    Sim,
    chain,
    draft,
    step,
    steps_of,
)

pytestmark = pytest.mark.unit

ORG = ARGS["create_organisation"]


def failing_email(
    sim: Sim, category: str = "permanent", decision: Decision = Decision.FAIL
) -> None:
    """Run the onboarding plan up to the email, which fails."""
    sim.start()
    sim.ok("validate", "organisation", "infrastructure", "billing")
    sim.fail("email", category, "the mail server refused")
    sim.judge("email", decision, "the email cannot be sent")


def test_a_failed_goal_undoes_its_effects_in_reverse_dependency_order_one_at_a_time() -> None:
    sim = Sim(ONBOARDING)
    failing_email(sim)
    assert sim.status() is GoalStatus.COMPENSATING
    chain_ = sim.compensations()
    assert sorted(t.step_id for t in chain_) == [
        "undo_billing",
        "undo_infrastructure",
        "undo_organisation",
    ]
    order = []
    while True:
        (running,) = [t for t in sim.compensations() if t.status is TaskStatus.DISPATCHED]
        order.append(running.step_id)
        pending = [t for t in sim.compensations() if t.status is TaskStatus.PENDING]
        assert len(pending) == 2 - len(order) + 1
        out = sim.ok(running.step_id)
        if out.published(ev.GoalFailed):
            break
    assert order[-1] == "undo_organisation"  # what the others were built on goes last
    assert set(order[:2]) == {"undo_billing", "undo_infrastructure"}
    done = sim.failed()
    assert done.category == "task_failed"
    assert sorted(done.compensated) == ["billing", "infrastructure", "organisation"]
    assert sim.status() is GoalStatus.FAILED
    for s in ("organisation", "infrastructure", "billing"):
        assert sim.status_of(s) is TaskStatus.COMPENSATED
    assert sim.status_of("validate") is TaskStatus.SUCCEEDED  # no compensation: stays
    assert sim.status_of("email") is TaskStatus.FAILED


def test_each_compensation_names_the_key_it_undoes_under_the_highest_fence() -> None:
    sim = Sim(ONBOARDING)
    failing_email(sim)
    sim.undo_all()
    undo = sim.history.undo
    assert len(undo) == 3
    by_step = {a.step_id.removeprefix("undo_"): a for a in undo}
    for original, assigned in by_step.items():
        task = sim.task(original)
        assert assigned.undoes == task.key
        assert assigned.idempotency_key == f"{task.key}:undo"
        assert assigned.fence == COMPENSATION_FENCE
        assert assigned.kind == "compensation"
        assert assigned.tool == REGISTRY.get(task.tool).compensation
        assert assigned.attempt == 1
    org = sim.task("organisation").result
    billing = sim.task("billing").result
    assert org is not None
    assert billing is not None
    assert by_step["organisation"].arguments == {"org_id": org["org_id"]}
    assert by_step["billing"].arguments == {"account_id": billing["account_id"]}
    assert by_step["infrastructure"].arguments == {
        "slug": "acme-widgets",
        "components": ["database", "storage", "network"],
    }


@pytest.mark.parametrize(
    ("category", "undone"),
    [
        ("transient", False),  # the tool says it did nothing
        ("permanent", False),
        ("invalid_arguments", False),
        ("timeout", True),  # unknown: it may have acted
        ("lease_expired", True),
        ("partial", True),
        ("crashed", True),  # an unexpected category is unknown too
    ],
)
def test_a_failed_step_is_undone_only_when_it_may_have_acted(category: str, undone: bool) -> None:
    sim = Sim(chain("create_organisation"))
    sim.start()
    key = sim.task("s1").key
    sim.fail("s1", category, "it broke", details={"org_id": "org_from_details"})
    out = sim.judge("s1", Decision.FAIL)
    assert [a.undoes for a in out.undo] == ([key] if undone else [])
    if undone:
        (assigned,) = out.undo
        assert assigned.arguments == {"org_id": "org_from_details"}  # what the failure said
        sim.undo_all()
    done = sim.failed()
    assert done.compensated == (["s1"] if undone else [])


def test_an_unknown_attempt_without_a_result_is_undone_by_its_key() -> None:
    sim = Sim(chain("notify_team_channel"))
    sim.start()
    sim.fail("s1", "timeout", "no answer")
    (assigned,) = sim.judge("s1", Decision.FAIL).undo
    assert assigned.arguments == {}  # no message id: the tool finds the message by key
    assert assigned.undoes == sim.task("s1").key


def test_an_attempt_in_flight_when_the_goal_ends_is_undone() -> None:
    sim = Sim(draft(step("a", "create_organisation", **ORG), step("b", value=1)))
    sim.start()
    key = sim.task("a").key
    sim.fail("b", "permanent")
    out = sim.judge("b", Decision.FAIL)
    assert sim.status_of("a") is TaskStatus.CANCELLED
    (assigned,) = out.undo
    assert (assigned.undoes, assigned.arguments) == (key, {})
    sim.complete("a")  # the late result is kept on the attempt, nothing is dispatched
    assert sim.status_of("a") is TaskStatus.CANCELLED
    sim.undo_all()
    assert sim.failed().compensated == ["a"]


def test_a_step_that_acted_under_two_keys_is_undone_once_per_key_newest_first() -> None:
    sim = Sim(chain("create_organisation", "echo"))
    sim.start()
    first = sim.task("s1").key
    sim.complete("s1")
    sim.judge("s1", Decision.RETRY, "the name is wrong", feedback="fix the name")
    sim.fire_retry("s1")
    second = sim.task("s1").key
    assert second != first
    sim.ok("s1")
    sim.fail("s2", "permanent")
    sim.judge("s2", Decision.FAIL)
    chain_ = sorted(sim.compensations(), key=lambda t: len(t.depends_on))
    assert [t.undoes for t in chain_] == [second, first]
    sim.undo_all()
    assert [a.undoes for a in sim.history.undo] == [second, first]


def test_effects_of_earlier_plan_versions_are_undone_after_the_newer_ones() -> None:
    first = draft(
        step("org", "create_organisation", **ORG),
        step("notify", "notify_team_channel", ["org"], text="hello"),
    )
    second = draft(
        step("org", "create_organisation", **ORG),
        step("post", "notify_team_channel", ["org"], text="hello again"),
        step("tail", "echo", ["post"], value=1),
    )
    sim = Sim(first, second)
    sim.start()
    sim.ok("org")
    sim.fail("notify", "timeout", "no answer")  # unknown: it may have posted
    sim.judge("notify", Decision.REPLAN, "try another text")
    assert sim.st.goal.plan_version == 2
    sim.ok("post")
    sim.fail("tail", "permanent")
    sim.judge("tail", Decision.FAIL)
    undone = [(t.plan_version, t.compensates) for t in _chain(sim)]
    assert undone[0] == (2, sim.task("post").task_id)
    assert (1, sim.task("notify", version=1).task_id) in undone
    assert undone.index((1, sim.task("notify", version=1).task_id)) > 0


def _chain(sim: Sim) -> list[Any]:
    """The compensation tasks in the order their chain runs them."""
    tasks = {t.step_id: t for t in sim.compensations()}
    first = [t for t in tasks.values() if not t.depends_on]
    order = list(first)
    while len(order) < len(tasks):
        order += [t for t in tasks.values() if t.depends_on == (order[-1].step_id,)]
    return order


@pytest.mark.parametrize(
    ("policy", "undone"),
    [
        ("all", ["undo_b", "undo_a"]),
        ("dependents", ["undo_b"]),  # b failed; a is not built on it
        ("none", []),
    ],
)
def test_the_compensation_policy_chooses_what_is_undone(policy: str, undone: list[str]) -> None:
    sim = Sim(
        draft(step("a", "create_organisation", **ORG), step("b", "notify_team_channel", text="x"))
    )
    sim.start(compensation_policy=policy)
    sim.ok("a")
    sim.fail("b", "timeout")
    out = sim.judge("b", Decision.FAIL)
    assert [t.step_id for t in _chain(sim)] == undone
    assert steps_of(out.undo) == undone[:1]
    if not undone:
        assert sim.failed().compensated == []
        assert sim.status() is GoalStatus.FAILED


def test_the_dependents_policy_undoes_the_failed_step_and_what_depends_on_it() -> None:
    first = draft(
        step("org", "create_organisation", **ORG),
        step("post", "notify_team_channel", ["org"], text="x"),
        step("side", "notify_team_channel", text="y"),
        step("last", "echo", ["post", "side"], value=1),
    )
    sim = Sim(first)
    sim.start(compensation_policy="dependents")
    sim.ok("org", "side", "post")
    sim.complete("last")
    sim.judge("last", Decision.ESCALATE, "unsure")
    sim.resolve("abort")  # the failed step: last, which did nothing undoable
    assert sim.compensations() == []
    assert sim.failed().category == "aborted"


@pytest.mark.parametrize("ending", ["cancel", "deadline"])
def test_the_dependents_policy_undoes_nothing_when_no_step_failed(ending: str) -> None:
    sim = Sim(chain("create_organisation", "echo"))
    sim.start(compensation_policy="dependents", deadline_at=sim.now.replace(year=2030))
    sim.ok("s1")
    if ending == "cancel":
        sim.cancel()
    else:
        sim.fire_deadline()
    assert sim.compensations() == []
    assert sim.status() in (GoalStatus.CANCELLED, GoalStatus.FAILED)


def test_a_failed_compensation_is_retried_with_its_own_key_and_fence() -> None:
    sim = Sim(chain("create_organisation", "echo"))
    sim.start()
    sim.ok("s1")
    sim.fail("s2", "permanent")
    (first,) = sim.judge("s2", Decision.FAIL).undo
    out = sim.lost("undo_s1", "transient", "the database is busy")
    (timer,) = out.timers(TimerKind.RETRY)
    policy = REGISTRY.get("delete_organisation").retry
    assert (timer.due_at - sim.now).total_seconds() == pytest.approx(policy.delay(1, sim.draw))
    (again,) = sim.fire_retry("undo_s1").undo
    assert (again.attempt, again.idempotency_key, again.undoes, again.fence) == (
        2,
        first.idempotency_key,
        first.undoes,
        COMPENSATION_FENCE,
    )
    sim.ok("undo_s1")
    assert sim.failed().compensated == ["s1"]


def test_a_compensation_whose_retries_run_out_asks_a_human() -> None:
    sim = Sim(chain("create_organisation", "echo"))
    sim.start()
    sim.ok("s1")
    sim.fail("s2", "permanent")
    sim.judge("s2", Decision.FAIL)
    attempts = REGISTRY.get("delete_organisation").retry.max_attempts
    for _ in range(attempts - 1):
        sim.retry("undo_s1")
    out = sim.lost("undo_s1")
    (raised,) = out.published(ev.EscalationRaised)
    assert raised.task_id == sim.task("undo_s1").task_id
    assert sim.status() is GoalStatus.WAITING_HUMAN
    assert sim.ended() is None


@pytest.mark.parametrize("decision", [Decision.FAIL, Decision.ESCALATE, Decision.REPLAN])
def test_a_compensation_that_cannot_be_accepted_asks_a_human(decision: Decision) -> None:
    sim = Sim(chain("create_organisation", "echo"))
    sim.start()
    sim.ok("s1")
    sim.fail("s2", "permanent")
    sim.judge("s2", Decision.FAIL)
    sim.fail("undo_s1", "permanent", "refused")
    out = sim.judge("undo_s1", decision, "refused")
    (raised,) = out.published(ev.EscalationRaised)
    assert "compensation undo_s1 failed" in raised.reason
    assert not out.asked
    assert sim.st.goal.plan_version == 1


def test_approving_a_compensation_goes_on_with_the_rollback() -> None:
    sim = Sim(chain("create_organisation", "notify_team_channel", "echo"))
    sim.start()
    sim.ok("s1", "s2")
    sim.fail("s3", "permanent")
    sim.judge("s3", Decision.FAIL)
    sim.fail("undo_s2", "permanent", "refused")
    sim.judge("undo_s2", Decision.ESCALATE, "refused")
    out = sim.resolve("approve")
    assert steps_of(out.undo) == ["undo_s1"]
    assert sim.status() is GoalStatus.COMPENSATING
    sim.ok("undo_s1")
    assert sorted(sim.failed().compensated) == ["s1", "s2"]


def test_aborting_a_compensation_stops_the_rollback() -> None:
    sim = Sim(chain("create_organisation", "notify_team_channel", "echo"))
    sim.start()
    sim.ok("s1", "s2")
    sim.fail("s3", "permanent", "no")
    sim.judge("s3", Decision.FAIL, "no")
    sim.ok("undo_s2")
    sim.fail("undo_s1", "permanent", "refused")
    sim.judge("undo_s1", Decision.ESCALATE, "refused")
    out = sim.resolve("abort")
    assert not out.assigned
    done = sim.failed()
    assert done.category == "compensation_aborted"
    assert "rollback stopped at undo_s1" in done.message
    assert done.compensated == ["s2"]
    assert sim.status() is GoalStatus.FAILED
    assert sim.status_of("s1") is TaskStatus.SUCCEEDED  # its effect stays, as reported


def test_an_unanswered_compensation_escalation_aborts_the_rollback_when_it_expires() -> None:
    sim = Sim(chain("create_organisation", "echo"))
    sim.start()
    sim.ok("s1")
    sim.fail("s2", "permanent")
    sim.judge("s2", Decision.FAIL)
    sim.fail("undo_s1", "permanent")
    sim.judge("undo_s1", Decision.ESCALATE, "refused")
    sim.expire()
    assert sim.failed().category == "compensation_aborted"


def test_a_cancelled_goal_undoes_what_ran_and_reports_cancelled() -> None:
    sim = Sim(chain("create_organisation", "notify_team_channel"))
    sim.start()
    sim.ok("s1")
    out = sim.cancel()
    undo = [t.undoes for t in _chain(sim)]
    assert undo == [sim.task("s2").key, sim.task("s1").key]  # s2 was in flight
    assert steps_of(out.undo) == ["undo_s2"]
    sim.undo_all()
    assert sorted(sim.failed().compensated) == ["s1", "s2"]
    assert sim.status() is GoalStatus.CANCELLED


def test_outcomes_during_the_rollback_do_not_restart_the_plan() -> None:
    sim = Sim(draft(step("a", "create_organisation", **ORG), step("b", value=1)))
    sim.start()
    sim.fail("b", "permanent")
    sim.judge("b", Decision.FAIL)
    sim.complete("a")
    out = sim.judge("a", Decision.ACCEPT)
    assert out.nothing
    assert sim.st.goal.ending is not None


# -- found bugs ----------------------------------------------------------------------------------


def _carried_then_failed() -> Sim:
    """org succeeds in version 1 and is carried into version 2, whose other step then fails."""
    first = draft(step("org", "create_organisation", **ORG), step("b", value=1))
    second = draft(step("org", "create_organisation", **ORG), step("c", value=2))
    sim = Sim(first, second)
    sim.start()
    sim.ok("org")
    sim.fail("b", "permanent")
    sim.judge("b", Decision.REPLAN)
    sim.fail("c", "permanent")
    sim.judge("c", Decision.FAIL)
    return sim


def test_a_carried_step_is_undone_once() -> None:
    sim = _carried_then_failed()
    undoes = [t.undoes for t in sim.compensations()]
    assert undoes == [sim.task("org").key]


def test_a_key_shared_by_two_plan_versions_is_undone_once() -> None:
    plan = draft(step("org", "create_organisation", **ORG))
    sim = Sim(plan, draft(step("org", "create_organisation", **ORG), step("b", value=1)))
    sim.start()
    sim.fail("org", "timeout")
    sim.judge("org", Decision.REPLAN)
    assert sim.task("org").key == sim.task("org", version=1).key  # the same call: the same key
    sim.ok("org")
    sim.fail("b", "permanent")
    sim.judge("b", Decision.FAIL)
    undoes = [t.undoes for t in sim.compensations()]
    assert undoes == [sim.task("org").key]


def test_compensated_lists_step_ids_only() -> None:
    sim = Sim(chain("create_organisation", "echo"))
    sim.start()
    sim.complete("s1")
    sim.judge("s1", Decision.RETRY, "wrong name")
    sim.fire_retry("s1")
    sim.ok("s1")
    sim.fail("s2", "permanent")
    sim.judge("s2", Decision.FAIL)
    sim.undo_all()
    assert set(sim.failed().compensated) <= {"s1", "s2"}


def test_a_step_named_like_a_compensation_keeps_its_task() -> None:
    sim = Sim(draft(step("a", "create_organisation", **ORG), step("undo_a", value=1)))
    sim.start()
    sim.ok("a")
    sim.fail("undo_a", "permanent")
    sim.judge("undo_a", Decision.FAIL)
    actions = [t for t in sim.st.tasks.values() if t.action]
    assert sorted(t.step_id for t in actions) == ["a", "undo_a"]
    assert len(sim.compensations()) == 1


def test_a_superseded_attempt_that_reports_it_did_nothing_is_not_undone() -> None:
    first = draft(step("org", "create_organisation", **ORG), step("b", value=1))
    sim = Sim(first, draft(step("c", value=2)))
    sim.start()
    sim.fail("b", "permanent")
    sim.judge("b", Decision.REPLAN)
    assert sim.status_of("org", version=1) is TaskStatus.SUPERSEDED
    sim.fail("org", "permanent", "the slug is taken", version=1)
    sim.fail("c", "permanent")
    sim.judge("c", Decision.FAIL)
    assert sim.compensations() == []


def test_the_compensation_of_an_older_key_gets_that_call_s_arguments() -> None:
    plan = draft(
        step("infra", "provision_infrastructure", org_id="org_1", slug="acme"),
        step("b", value=1),
    )
    sim = Sim(plan)
    sim.start()
    sim.fail("infra", "timeout")  # may have provisioned tenant acme
    sim.judge("infra", Decision.ESCALATE, "timed out")
    sim.resolve("set", {"slug": "acme-two"})  # a new call, a new key
    sim.ok("infra")
    sim.fail("b", "permanent")
    sim.judge("b", Decision.FAIL)
    sim.undo_all()
    slugs = {a.undoes: a.arguments["slug"] for a in sim.history.undo}
    assert sorted(slugs.values()) == ["acme", "acme-two"]
