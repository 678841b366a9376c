"""The planner's kept plans on the real ledger: a goal's tasks as the last batch left them are
used by the next batch only while neither another planner's batch nor a change outside a batch
snapshot has come between, tokens charged in a batch count at once, and a failed batch forgets
them. The planner runs in-process; the test plays workers and evaluator.

Most cases end on a verdict for the chain's first step: the planner dispatches the second step
when, as far as it knows, the first was waiting for that verdict, and does nothing otherwise. So
what it sends tells which version of the first step it believed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from agents import events as ev
from agents.engines.offline import OfflineEngine
from agents.ledger.migrate import migrate
from agents.planner import ledger as L  # noqa: N812
from agents.planner.agent import Planner
from agents.planner.snapshot import Kept, Plan
from agents.runtime.consumer import Delivery
from agents.runtime.settings import MeshSettings
from agents.tools.catalogue import default_registry
from tests.mesh_support import steps_input

pytestmark = pytest.mark.integration
DELIVERY = Delivery("t", 0, 0, None, (), 0, None)
Conn = psycopg.Connection[Any]


@pytest.fixture(scope="module")
def conn(stack_settings: MeshSettings) -> Iterator[Conn]:
    migrate(stack_settings.database_url.get_secret_value())
    with psycopg.connect(stack_settings.database_url.get_secret_value()) as connection:
        yield connection


@pytest.fixture
def planner() -> Planner:
    return Planner(engine=OfflineEngine(), registry=default_registry(), mesh=f"kept.{ev.new_id()}.")


def batch(conn: Conn, planner: Planner, events: Sequence[ev.Event]) -> list[ev.Event]:
    """One batch as the ledger sink runs it: hooks around the handlers, in one transaction."""
    handlers = planner.handlers()
    with conn.transaction():
        planner.before_batch(conn, events)
        try:
            out = [o for e in events for o in handlers[type(e)](e, DELIVERY, conn)]
        except BaseException:
            planner.after_batch(False)
            raise
        planner.after_batch(True)
    return out


def submitted(**fields: Any) -> ev.GoalSubmitted:
    """A two-step chain."""
    return ev.GoalSubmitted(
        envelope=ev.Envelope(goal_id=ev.new_id()),
        text="kept plans",
        input=steps_input(
            {"id": "s0", "tool": "echo", "arguments": {"value": 0}},
            {"id": "s1", "tool": "echo", "arguments": {"value": 1}, "depends_on": ["s0"]},
        ),
        compensation_policy="none",
        **fields,
    )


def started(conn: Conn, planner: Planner, max_tokens: int | None = None) -> ev.TaskAssigned:
    """A two-step chain submitted in a batch of its own; its first step's dispatch."""
    (first,) = batch(conn, planner, [submitted(max_tokens=max_tokens)])
    assert isinstance(first, ev.TaskAssigned)
    return first


def completed(task: ev.TaskAssigned, usage: ev.Usage | None = None) -> ev.TaskCompleted:
    now = ev.now()
    return ev.TaskCompleted(
        envelope=ev.Envelope(goal_id=task.goal_id),
        task_id=task.task_id,
        step_id=task.step_id,
        tool=task.tool,
        attempt=task.attempt,
        result={"value": 0},
        worker_id="w",
        started_at=now,
        finished_at=now,
        usage=usage or ev.Usage(),
    )


def accepted(task: ev.TaskAssigned, usage: ev.Usage | None = None) -> ev.TaskEvaluated:
    return ev.TaskEvaluated(
        envelope=ev.Envelope(goal_id=task.goal_id),
        task_id=task.task_id,
        step_id=task.step_id,
        attempt=task.attempt,
        decision="accept",
        confidence=1.0,
        reason="ok",
        usage=usage or ev.Usage(),
    )


def dispatched_steps(events: Sequence[ev.Event]) -> list[str]:
    return [e.step_id for e in events if isinstance(e, ev.TaskAssigned)]


def back_to_dispatched(conn: Conn, task: ev.TaskAssigned, *, as_a_writer: bool) -> None:
    """Put the step back to waiting for its worker, behind the planner's back: as a writer
    does (locking the goal, which counts a revision), or as nothing in the mesh ever does."""
    with conn.transaction():
        if as_a_writer:
            assert L.lock_goal(conn, task.goal_id) is not None
        conn.execute("update tasks set status = 'dispatched' where task_id = %s", (task.task_id,))


def test_the_next_batch_uses_the_kept_plan_and_reads_no_task(conn: Conn, planner: Planner) -> None:
    first = started(conn, planner)
    assert batch(conn, planner, [completed(first)]) == []
    # A write that bypasses the rule every writer follows goes unseen: the plan was not read.
    back_to_dispatched(conn, first, as_a_writer=False)
    assert dispatched_steps(batch(conn, planner, [accepted(first)])) == ["s1"]


def test_the_new_goals_of_a_batch_are_stored_as_submitted_and_a_repeat_once(
    conn: Conn, planner: Planner
) -> None:
    deadline = ev.now() + timedelta(hours=1)
    one = submitted(max_tokens=900, budget_usd=2.5, deadline_at=deadline, confidence_threshold=0.7)
    two = submitted(submitted_by="intake")
    again = one.model_copy(update={"envelope": ev.Envelope(goal_id=one.goal_id)})
    assert again.event_id != one.event_id  # the same goal submitted twice in one batch
    out = batch(conn, planner, [one, two, again])
    assert [(e.goal_id, dispatched_steps([e])) for e in out] == [
        (one.goal_id, ["s0"]),
        (two.goal_id, ["s0"]),
    ]
    for goal in (one, two):
        assert stored(conn, goal.goal_id) == (
            (goal.text, goal.input, goal.max_tokens, goal.budget_usd, goal.deadline_at),
            (goal.confidence_threshold, goal.submitted_by, goal.envelope.occurred_at),
            ("running", 1, 1, planner.mesh, True),
            (1, ["dispatched", "pending"], 1),
        )
    # The batch kept the plans it stored: a write behind its back goes unseen.
    first = out[0]
    assert isinstance(first, ev.TaskAssigned)
    conn.execute("update tasks set status = 'pending' where task_id = %s", (first.task_id,))
    conn.commit()
    assert dispatched_steps(batch(conn, planner, [completed(first), accepted(first)])) == ["s1"]


def stored(conn: Conn, goal_id: str) -> tuple[tuple[Any, ...], ...]:
    """What the ledger holds of a goal: as submitted; its progress and keeper; its plans, its
    tasks' statuses and the attempts dispatched."""
    row = conn.execute(
        "select text, input, max_tokens, budget_usd, deadline_at, confidence_threshold, "
        "submitted_by, submitted_at, status, plan_version, steps_used, mesh, kept_by is not null, "
        "(select count(*) from plans p where p.goal_id = g.goal_id), "
        "(select array_agg(t.status order by t.step_id) from tasks t where t.goal_id = g.goal_id), "
        "(select count(*) from attempts a join tasks t using (task_id) "
        "where t.goal_id = g.goal_id) "
        "from goals g where goal_id = %s",
        (goal_id,),
    ).fetchone()
    conn.commit()
    assert row is not None
    return row[:5], row[5:8], row[8:13], row[13:]


def test_a_new_goal_that_cannot_be_planned_fails_and_its_batch_goes_on(
    conn: Conn, planner: Planner
) -> None:
    late, fine = submitted(deadline_at=ev.now() - timedelta(seconds=1)), submitted()
    out = batch(conn, planner, [late, fine])
    assert [(type(e), e.goal_id) for e in out] == [
        (ev.GoalFailed, late.goal_id),
        (ev.TaskAssigned, fine.goal_id),
    ]
    assert stored(conn, late.goal_id)[2:] == (("failed", 0, 0, planner.mesh, False), (0, None, 0))
    assert stored(conn, fine.goal_id)[3] == (1, ["dispatched", "pending"], 1)


def test_a_new_goal_stored_meanwhile_by_another_planner_is_a_repeat_submission(
    conn: Conn, planner: Planner, stack_settings: MeshSettings
) -> None:
    goal = submitted()
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        planner.before_batch(conn, [goal])
        assert dispatched_steps(planner.on_submitted(goal, DELIVERY, conn)) == ["s0"]
        other = Planner(engine=OfflineEngine(), registry=default_registry(), mesh=planner.mesh)
        with psycopg.connect(stack_settings.database_url.get_secret_value()) as elsewhere:
            assert dispatched_steps(batch(elsewhere, other, [goal])) == ["s0"]
        try:
            planner.after_batch(True)  # the batch's flush stores the goal it took in
        except BaseException:
            planner.after_batch(False)
            raise
    # The failed batch again, record by record as the sink applies it: a repeated submission.
    with conn.transaction():
        assert planner.on_submitted(goal, DELIVERY, conn) == []
    assert stored(conn, goal.goal_id)[3] == (1, ["dispatched", "pending"], 1)


def test_a_goal_locked_by_another_transaction_is_read_again(conn: Conn, planner: Planner) -> None:
    first = started(conn, planner)
    assert batch(conn, planner, [completed(first)]) == []
    back_to_dispatched(conn, first, as_a_writer=True)  # a fired timer, another planner
    assert dispatched_steps(batch(conn, planner, [accepted(first)])) == []


def test_a_batch_of_another_planner_takes_the_goal_over(conn: Conn, planner: Planner) -> None:
    first = started(conn, planner)
    assert batch(conn, planner, [completed(first)]) == []
    other = Planner(engine=OfflineEngine(), registry=default_registry(), mesh=planner.mesh)
    (second,) = batch(conn, other, [accepted(first)])  # after a rebalance, say
    assert isinstance(second, ev.TaskAssigned)
    # Back with the first planner, which kept the second step as not yet sent.
    ended = batch(conn, planner, [completed(second), accepted(second)])
    assert [type(e) for e in ended] == [ev.GoalCompleted]


def test_tokens_charged_in_a_batch_count_at_once_and_keep_the_plan(
    conn: Conn, planner: Planner
) -> None:
    first = started(conn, planner, max_tokens=100)
    assert batch(conn, planner, [completed(first, ev.Usage(input_tokens=60))]) == []
    # Still kept after a charge: a write behind the planner's back goes unseen.
    back_to_dispatched(conn, first, as_a_writer=False)
    # The verdict's tokens, charged in this batch, stop the second step before it is sent.
    ended = batch(conn, planner, [accepted(first, ev.Usage(output_tokens=50, cost_usd=0.01))])
    assert [(type(e), getattr(e, "category", None)) for e in ended] == [
        (ev.GoalFailed, "budget_tokens")
    ]
    assert charged(conn, first.goal_id) == (60, 50, pytest.approx(0.01), 2)


def test_a_goal_charged_twice_in_one_batch_is_charged_the_sum(conn: Conn, planner: Planner) -> None:
    first = started(conn, planner)
    tool, judge = ev.Usage(input_tokens=7, cost_usd=0.25), ev.Usage(output_tokens=5, cost_usd=0.5)
    out = batch(conn, planner, [completed(first, tool), accepted(first, judge)])
    assert dispatched_steps(out) == ["s1"]
    assert charged(conn, first.goal_id) == (7, 5, pytest.approx(0.75), 2)


def charged(conn: Conn, goal_id: str) -> tuple[Any, ...] | None:
    """The goal's tokens in and out, its cost, and how many line items its usage log holds."""
    row = conn.execute(
        "select input_tokens, output_tokens, cost_usd, "
        "(select count(*) from usage_log u where u.goal_id = g.goal_id) "
        "from goals g where goal_id = %s",
        (goal_id,),
    ).fetchone()
    conn.commit()
    return row


def test_an_outcome_recorded_outside_a_batch_counts_a_revision(
    conn: Conn, planner: Planner
) -> None:
    first = started(conn, planner)
    # Record by record, as after a failed batch: no snapshot, and no lock on the goal.
    with conn.transaction():
        assert list(planner.on_outcome(completed(first), DELIVERY, conn)) == []
    assert dispatched_steps(batch(conn, planner, [accepted(first)])) == ["s1"]


@pytest.mark.parametrize("flushed", [False, True], ids=["in-a-handler", "in-the-commit"])
def test_a_failed_batch_leaves_no_trace_in_kept_plans(
    conn: Conn, planner: Planner, flushed: bool
) -> None:
    first = started(conn, planner)

    class Failed(Exception):
        pass

    with pytest.raises(Failed), conn.transaction():  # recorded in memory, then rolled back
        planner.before_batch(conn, [completed(first)])
        planner.on_outcome(completed(first), DELIVERY, conn)
        if flushed:
            planner.after_batch(True)
        planner.after_batch(False)
        raise Failed
    # The ledger still has the step waiting for its worker: a verdict now is too early.
    assert dispatched_steps(batch(conn, planner, [accepted(first)])) == []


def test_at_most_so_many_plans_are_kept_the_least_recent_forgotten() -> None:
    kept = Kept(most=2)
    for goal_id in ("a", "b", "a", "c"):
        kept.keep(goal_id, Plan(revision=1, tasks={}, outcomes={}))
    assert len(kept) == 2
    assert kept.revisions(["a", "b", "c"]) == (["a", "c"], [1, 1])
    kept.keep("a", None)
    assert kept.revisions(["a", "b", "c"]) == (["c"], [1])
