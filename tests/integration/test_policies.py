"""Self-orchestration policies end to end, asserting the exact events and ledger rows: backoff
retries on durable timers, escalation and its four answers, saga rollback in reverse dependency
order, budgets, cancellation, and late results."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents import events as ev
from agents.client import GoalStatus, MeshClient
from agents.demo import onboarding_input
from agents.history import goal_history
from agents.runtime.app import group_id
from agents.runtime.fleet import Fleet
from agents.runtime.publisher import Publisher
from agents.runtime.settings import MeshSettings
from agents.tools.catalogue import default_registry
from schemas.codec import Codec
from tests.mesh_support import ledger_rows, own_topics, running_mesh, steps_input
from tests.support import assert_eventually

pytestmark = pytest.mark.integration
REGISTRY = default_registry()


@dataclass
class Mesh:
    settings: MeshSettings
    client: MeshClient
    fleet: Fleet
    sandbox: Path


@pytest.fixture(scope="module")
def mesh(stack_settings: MeshSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One running mesh for the module (each test uses goals of its own)."""
    tmp = tmp_path_factory.mktemp("policies")
    with (
        own_topics(stack_settings) as settings,
        running_mesh(settings, tmp) as fleet,
        MeshClient(settings) as client,
    ):
        yield Mesh(settings, client, fleet, tmp / "sandbox")


def company() -> str:
    return f"Policyco {uuid.uuid4().hex[:8]}"


def onboard(mesh: Mesh, simulate: dict[str, Any], **options: Any) -> GoalStatus:
    name = company()
    handle = mesh.client.submit(
        f"onboard {name}", input=onboarding_input(name, simulate), **options
    )
    return handle.wait(90)


def attempts(mesh: Mesh, goal_id: str, step: str) -> list[tuple[Any, ...]]:
    return ledger_rows(
        mesh.settings,
        "select a.attempt, a.status, a.category, v.decision, a.arguments from attempts a "
        "join tasks t using (task_id) "
        "left join verdicts v on v.task_id = a.task_id and v.attempt = a.attempt "
        "where t.goal_id = %s and t.step_id = %s order by a.attempt",
        (goal_id, step),
    )


def step_events(history: list[ev.Event], step: str) -> list[str]:
    """The step's events in log order, as 'Type[attempt]' (verdicts with their decision)."""
    out = []
    for e in history:
        if getattr(e, "step_id", None) != step:
            continue
        label = f"{type(e).__name__}[{e.attempt}]"  # type: ignore[attr-defined]
        if isinstance(e, ev.TaskEvaluated):
            label += f":{e.decision}"
        out.append(label)
    return out


def compensations(history: list[ev.Event]) -> list[str]:
    return [
        e.step_id for e in history if isinstance(e, ev.TaskAssigned) and e.kind == "compensation"
    ]


def test_flaky_billing_retries_with_jittered_backoff_on_durable_timers(mesh: Mesh) -> None:
    final = onboard(mesh, {"configure_billing": {"fail_times": 2}})
    assert final.status == "completed", final
    assert [row[:4] for row in attempts(mesh, final.goal_id, "billing")] == [
        (1, "failed", "transient", "retry"),
        (2, "failed", "transient", "retry"),
        (3, "completed", None, "accept"),
    ]
    history = goal_history(mesh.settings, final.goal_id)
    assert step_events(history, "billing") == [
        "TaskAssigned[1]",
        "TaskFailed[1]",
        "TaskEvaluated[1]:retry",
        "TaskAssigned[2]",
        "TaskFailed[2]",
        "TaskEvaluated[2]:retry",
        "TaskAssigned[3]",
        "TaskCompleted[3]",
        "TaskEvaluated[3]:accept",
    ]
    policy = REGISTRY.get("configure_billing").retry
    timers = ledger_rows(
        mesh.settings,
        "select (t.payload->>'delay_s')::float, t.due_at, t.fired_at, a.dispatched_at "
        "from timers t join attempts a on a.task_id = t.task_id "
        "and a.attempt = (t.payload->>'attempt')::int + 1 "
        "where t.goal_id = %s and t.kind = 'retry' order by t.timer_id",
        (final.goal_id,),
    )
    assert len(timers) == 2
    for used, (delay, due, fired, dispatched) in enumerate(timers, start=1):
        base = policy.base_delay(used)
        assert base * (1 - policy.jitter) <= delay <= base
        assert fired >= due and dispatched >= due  # never before its time


def test_billing_down_escalates_then_a_human_retry_completes_it(mesh: Mesh) -> None:
    name = company()
    handle = mesh.client.submit(
        f"onboard {name}", input=onboarding_input(name, {"configure_billing": {"down": True}})
    )
    waiting = handle.wait(90)
    assert waiting.status == "waiting_human"
    limit = REGISTRY.get("configure_billing").retry.max_attempts
    assert [r[3] for r in attempts(mesh, handle.goal_id, "billing")] == ["retry"] * limit
    (question,) = mesh.client.escalations(goal_id=handle.goal_id)
    assert question.step_id == "billing" and question.evidence["category"] == "transient"
    assert question.options == ["approve", "retry", "abort", "set"]
    mesh.client.resolve(question.escalation_id, "retry", resolved_by="test")
    final = _after_answer(mesh, handle.goal_id, question.escalation_id)
    assert final.status == "completed"
    rows = attempts(mesh, handle.goal_id, "billing")
    assert rows[-1][:4] == (limit + 1, "completed", None, "accept")
    kinds = [type(e).__name__ for e in goal_history(mesh.settings, handle.goal_id)]
    assert kinds.count("EscalationRaised") == kinds.count("EscalationResolved") == 1
    assert kinds.index("EscalationRaised") < kinds.index("EscalationResolved")


def test_billing_down_aborted_by_a_human_rolls_back_in_reverse_order(mesh: Mesh) -> None:
    name = company()
    handle = mesh.client.submit(
        f"onboard {name}", input=onboarding_input(name, {"configure_billing": {"down": True}})
    )
    assert handle.wait(90).status == "waiting_human"
    (question,) = mesh.client.escalations(goal_id=handle.goal_id)
    mesh.client.resolve(question.escalation_id, "abort", resolved_by="test")
    final = _after_answer(mesh, handle.goal_id, question.escalation_id)
    assert (final.status, final.error_category) == ("failed", "aborted")
    history = goal_history(mesh.settings, handle.goal_id)
    assert compensations(history) == ["undo_infrastructure", "undo_organisation"]
    failed = history[-1]
    assert isinstance(failed, ev.GoalFailed)
    assert failed.compensated == ["infrastructure", "organisation"]
    _assert_rolled_back(mesh, name)


def test_partial_infrastructure_failure_rolls_back_each_step_once(mesh: Mesh) -> None:
    name = company()
    final = onboard(mesh, {"provision_infrastructure": {"partial_after": 2}})
    assert (final.status, final.error_category) == ("failed", "task_failed")
    history = goal_history(mesh.settings, final.goal_id)
    undone = compensations(history)
    assert sorted(undone) == ["undo_billing", "undo_infrastructure", "undo_organisation"]
    assert undone[-1] == "undo_organisation"  # after everything built on it
    infra = next(
        e for e in history if isinstance(e, ev.TaskAssigned) and e.step_id == "undo_infrastructure"
    )
    assert infra.arguments["components"] == ["database", "storage"]  # exactly what was done
    assert all(
        e.step_id not in ("email", "notify") for e in history if isinstance(e, ev.TaskAssigned)
    )
    del name


def test_a_deadline_ends_a_goal_whose_step_hangs_and_nothing_it_did_stays(mesh: Mesh) -> None:
    """The email hangs past the goal's deadline: the deadline's durable timer ends the goal while
    the call runs, the call is told to stop and acts no more, and everything the goal did,
    the hanging email included (its outcome is unknown), is undone."""
    final = onboard(mesh, {"send_onboarding_email": {"delay_s": 12}}, deadline_s=6)
    assert (final.status, final.error_category) == ("failed", "deadline")
    history = goal_history(mesh.settings, final.goal_id)
    undone = compensations(history)
    assert (undone[0], sorted(undone[1:3]), undone[3:]) == (
        "undo_email",
        ["undo_billing", "undo_infrastructure"],  # built in parallel: undone in either order
        ["undo_organisation"],
    )
    prefix = f"{final.goal_id}:%"
    live = ledger_rows(
        mesh.settings,
        "select (select count(*) from onboarding_organisations where idempotency_key like %s "
        "and deleted_at is null), (select count(*) from onboarding_billing_accounts where "
        "idempotency_key like %s and cancelled_at is null), (select count(*) from "
        "onboarding_emails where idempotency_key like %s and retracted_at is null)",
        (prefix, prefix, prefix),
    )
    assert live == [(0, 0, 0)]
    assert_eventually(  # the hanging call stopped without sending
        lambda: attempts(mesh, final.goal_id, "email")[0][1] != "dispatched",
        timeout=30,
        what="the email's call to stop",
    )
    assert ledger_rows(
        mesh.settings,
        "select count(*) from onboarding_emails where idempotency_key like %s",
        (prefix,),
    ) == [(0,)]


def test_a_step_budget_ends_the_goal_before_the_step_that_would_exceed_it(mesh: Mesh) -> None:
    final = onboard(mesh, {"configure_billing": {"fail_times": 3}}, max_steps=7)
    assert (final.status, final.error_category) == ("failed", "budget_steps")
    assert final.steps_used == 7
    history = goal_history(mesh.settings, final.goal_id)
    actions = [e for e in history if isinstance(e, ev.TaskAssigned) and e.kind == "action"]
    assert len(actions) == 7
    assert compensations(history)[-1] == "undo_organisation"


@pytest.mark.parametrize("answer", ["approve", "retry", "abort", "set"])
def test_low_confidence_escalates_and_each_answer_does_what_it_says(
    mesh: Mesh, answer: str
) -> None:
    goal = mesh.client.submit(
        "echo, judged unsure",
        input=steps_input(
            {"id": "say", "tool": "echo", "arguments": {"value": 1}},
            simulate={"echo": {"confidence": 0.3}},
        ),
        confidence_threshold=0.8,
    )
    assert goal.wait(60).status == "waiting_human"
    (question,) = mesh.client.escalations(goal_id=goal.goal_id)
    assert "confidence 0.30 is below the threshold 0.80" in question.reason
    values = {"value": 42} if answer == "set" else None
    mesh.client.resolve(question.escalation_id, answer, values=values, resolved_by="test")
    final = _after_answer(mesh, goal.goal_id, question.escalation_id)
    rows = attempts(mesh, goal.goal_id, "say")
    if answer == "approve":
        assert final.status == "completed" and len(rows) == 1
    elif answer == "abort":
        assert (final.status, final.error_category) == ("failed", "aborted")
    else:  # a new attempt runs (with the new arguments for "set"), and is judged again
        assert final.status == "waiting_human" and len(rows) == 2
        assert rows[1][4] == {"value": 42 if answer == "set" else 1}
        (again,) = mesh.client.escalations(goal_id=goal.goal_id)
        assert again.escalation_id != question.escalation_id


def test_a_cancelled_goal_dispatches_nothing_more(mesh: Mesh) -> None:
    goal = mesh.client.submit(
        "slow then more",
        input=steps_input(
            {"id": "slow", "tool": "pause", "arguments": {"seconds": 5}},
            {"id": "after", "tool": "echo", "arguments": {"value": 1}, "depends_on": ["slow"]},
        ),
    )
    assert_eventually(
        lambda: attempts(mesh, goal.goal_id, "slow"), timeout=30, what="slow dispatched"
    )
    mesh.client.cancel(goal.goal_id, reason="changed my mind")
    final = goal.wait(30)
    assert (final.status, final.error_category) == ("cancelled", "cancelled")
    assert_eventually(
        lambda: attempts(mesh, goal.goal_id, "slow")[0][1] != "dispatched",
        timeout=30,
        what="the running pause noticed",
    )
    assert attempts(mesh, goal.goal_id, "after") == []
    history = goal_history(mesh.settings, goal.goal_id)
    ended = next(i for i, e in enumerate(history) if isinstance(e, ev.GoalFailed))
    assert not [e for e in history[ended:] if isinstance(e, ev.TaskAssigned)]


def test_late_results_of_a_superseded_attempt_change_nothing(mesh: Mesh) -> None:
    goal = mesh.client.submit(
        "flaky once",
        input=steps_input(
            {"id": "f", "tool": "flaky", "arguments": {"fail_times": 1, "value": "ok"}}
        ),
    )
    assert goal.wait(60).status == "completed"
    before = ledger_rows(
        mesh.settings,
        "select status, attempt, result from tasks where goal_id = %s",
        (goal.goal_id,),
    )
    task_id = f"{goal.goal_id}.1.f"
    now = ev.now()
    stale = [
        ev.TaskCompleted(
            envelope=ev.Envelope(goal_id=goal.goal_id),
            task_id=task_id,
            step_id="f",
            tool="flaky",
            attempt=1,
            result={"value": "stale"},
            worker_id="zombie",
            started_at=now,
            finished_at=now,
        ),
        ev.TaskEvaluated(
            envelope=ev.Envelope(goal_id=goal.goal_id),
            task_id=task_id,
            step_id="f",
            attempt=1,
            decision="accept",
            confidence=1.0,
            reason="zombie verdict",
        ),
    ]
    publisher = Publisher(settings=mesh.settings, codec=Codec(), client_id="zombie")
    for event in stale:
        publisher.publish(event)
    publisher.close()
    ids = [e.event_id for e in stale]

    def seen() -> bool:
        sql = "select 1 from inbox where consumer = %s and event_id = any(%s)"
        group = group_id(mesh.settings.topic_prefix, "planner")
        return len(ledger_rows(mesh.settings, sql, (group, ids))) == 2

    assert_eventually(seen, timeout=30, what="the planner consumed the late events")
    after = ledger_rows(
        mesh.settings,
        "select status, attempt, result from tasks where goal_id = %s",
        (goal.goal_id,),
    )
    assert after == before
    assert after[0][2] == {"value": "ok"}


def _after_answer(mesh: Mesh, goal_id: str, escalation_id: str) -> GoalStatus:
    """Wait for the planner to take the answer in (the question is no longer open; a new one
    may already be), then for the goal to settle again."""

    def answered() -> bool:
        still_open = mesh.client.escalations(goal_id=goal_id)
        return all(e.escalation_id != escalation_id for e in still_open)

    assert_eventually(answered, timeout=30, what="the answer taken in")
    return mesh.client.handle(goal_id).wait(60)


def _assert_rolled_back(mesh: Mesh, name: str) -> None:
    (org,) = ledger_rows(
        mesh.settings,
        "select org_id, slug, deleted_at from onboarding_organisations where name = %s",
        (name,),
    )
    assert org[2] is not None
    assert list((mesh.sandbox / "tenants" / org[1]).glob("*.json")) == []


def test_a_replan_verdict_makes_a_new_plan_that_keeps_completed_steps(mesh: Mesh) -> None:
    first = {"id": "a", "tool": "echo", "arguments": {"value": "kept"}}
    bad = {
        "id": "b",
        "tool": "validate_customer_data",
        "depends_on": ["a"],
        "arguments": {"company": "X", "email": "nobody", "plan": "gold", "seats": 0},
    }
    other_way = {"id": "c", "tool": "echo", "arguments": {"value": "rerouted"}, "depends_on": ["a"]}
    goal = mesh.client.submit(
        "needs another way",
        input=steps_input(
            first,
            bad,
            fallback_steps=[first, other_way],
            simulate={"validate_customer_data": {"replan": True}},
        ),
    )
    final = goal.wait(60)
    assert final.status == "completed", final
    assert {t.step_id for t in final.tasks} == {"a", "c"}
    (plan,) = ledger_rows(
        mesh.settings, "select plan_version, replans from goals where goal_id = %s", (goal.goal_id,)
    )
    assert plan == (2, 1)
    runs = ledger_rows(
        mesh.settings,
        "select t.plan_version, t.step_id, count(a.attempt) from tasks t left join attempts a "
        "using (task_id) where t.goal_id = %s group by 1, 2 order by 1, 2",
        (goal.goal_id,),
    )
    assert runs == [(1, "a", 1), (1, "b", 1), (2, "a", 0), (2, "c", 1)]  # a ran once, in v1
