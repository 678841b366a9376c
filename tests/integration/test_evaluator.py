"""The evaluator on the real ledger: an outcome is judged by the arguments it carries, a goal is
read once for all its outcomes, and an outcome of an attempt the ledger does not hold is refused."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from agents import events as ev
from agents.engines.offline import OfflineEngine
from agents.evaluator.agent import Evaluator, UnknownTaskError
from agents.ledger.db import open_pool
from agents.planner import repository
from agents.runtime.consumer import Delivery
from agents.runtime.settings import MeshSettings
from agents.tools.catalogue import default_registry
from tests.mesh_support import stored
from tests.support import envelope, unique

pytestmark = pytest.mark.integration
MESH = "test-evaluator."
DELIVERY = Delivery("results", 0, 0, None, (), 0, None)


@pytest.fixture
def ledger(stack_settings: MeshSettings) -> Iterator[ConnectionPool]:
    pool = open_pool(stack_settings, autocommit=True)
    yield pool
    with pool.connection() as conn:
        conn.execute("delete from goals where mesh = %s", (MESH,))
    pool.close()


def evaluator(ledger: ConnectionPool) -> Evaluator:
    return Evaluator(engine=OfflineEngine(), registry=default_registry(), db=ledger)


def submit(ledger: ConnectionPool, **goal: Any) -> str:
    """A goal in the ledger, with no plan, tasks or attempts."""
    goal_id = unique("goal-")
    submitted = ev.GoalSubmitted(envelope=envelope(goal_id), text="welcome Acme", **goal)
    with ledger.connection() as conn:
        repository.write(conn, [stored(submitted)], mesh=MESH)
    return goal_id


def email_sent(goal_id: str, *, to: str, arguments: dict[str, Any] | None) -> ev.TaskCompleted:
    now = datetime.now(UTC)
    return ev.TaskCompleted(
        envelope=envelope(goal_id),
        task_id=unique("task-"),
        step_id="email",
        tool="send_onboarding_email",
        attempt=1,
        result={"message_id": "m-1", "to": to},
        worker_id="w-1",
        started_at=now,
        finished_at=now,
        arguments=arguments,
    )


def welcome(to: str) -> dict[str, Any]:
    return {"to": to, "company": "Acme", "org_id": "org_acme"}


def judge(evaluator: Evaluator, *outcomes: ev.TaskCompleted) -> list[str]:
    """The decisions on ``outcomes``, judged as one batch."""
    evaluator.before_batch(outcomes)
    try:
        verdicts = [v for o in outcomes for v in evaluator.on_outcome(o, DELIVERY)]
    finally:
        evaluator.after_batch()
    return [v.decision for v in verdicts if isinstance(v, ev.TaskEvaluated)]


def test_an_outcome_is_judged_by_the_arguments_it_carries(ledger: ConnectionPool) -> None:
    goal_id = submit(ledger)  # the ledger holds no attempt of these outcomes
    right = email_sent(goal_id, to="ada@acme.test", arguments=welcome("ada@acme.test"))
    wrong = email_sent(goal_id, to="bob@acme.test", arguments=welcome("ada@acme.test"))
    assert judge(evaluator(ledger), right, wrong) == ["accept", "retry"]


def test_a_goal_is_read_once_and_kept_for_its_later_outcomes(ledger: ConnectionPool) -> None:
    simulate = {"send_onboarding_email": {"confidence": 0.5}}
    goal_id = submit(ledger, input={"simulate": simulate}, confidence_threshold=0.9)
    judging = evaluator(ledger)
    first = email_sent(goal_id, to="ada@acme.test", arguments=welcome("ada@acme.test"))
    assert judge(judging, first) == ["escalate"]  # the goal's input and threshold, as stored
    with ledger.connection() as conn:
        conn.execute("delete from goals where goal_id = %s", (goal_id,))
    later = email_sent(goal_id, to="ada@acme.test", arguments=welcome("ada@acme.test"))
    assert judge(judging, later) == ["escalate"]
    with pytest.raises(UnknownTaskError):  # an evaluator that never saw the goal must read it
        judge(evaluator(ledger), later)


def test_an_outcome_of_an_attempt_the_ledger_does_not_hold_is_refused_at_once(
    ledger: ConnectionPool,
) -> None:
    """An older worker's outcome (or the lease watchdog's) carries no arguments: they come from
    the ledger's attempt. The planner records an attempt before it dispatches it, so one the
    ledger does not hold (a forged or replayed record, a pruned goal) is refused for good and
    dead-lettered, never retried in place for ever; so is an outcome of a goal it does not
    hold."""
    goal_id = submit(ledger)
    judging = evaluator(ledger)
    with pytest.raises(UnknownTaskError, match="the ledger holds no task-"):
        judge(judging, email_sent(goal_id, to="ada@acme.test", arguments=None))
    with pytest.raises(UnknownTaskError):
        judge(judging, email_sent(unique("goal-"), to="ada@acme.test", arguments=welcome("x")))


def test_an_outcome_that_could_not_be_judged_is_reported_as_failed(
    ledger: ConnectionPool,
) -> None:
    """What the consumer gave up on reaches the planner as a failed verdict, so the goal is
    decided on; an unknown attempt's has no goal waiting, so nothing is sent."""
    judging = evaluator(ledger)
    outcome = email_sent(submit(ledger), to="ada@acme.test", arguments=welcome("x"))
    (verdict,) = judging.on_failure(outcome, "handler_error", "ValueError: confidence")
    assert isinstance(verdict, ev.TaskEvaluated)
    assert (verdict.task_id, verdict.attempt, verdict.decision) == (outcome.task_id, 1, "fail")
    assert verdict.reason == "handler_error: ValueError: confidence"
    assert judging.on_failure(outcome, "unknown_task", "the ledger holds no ...") == []
