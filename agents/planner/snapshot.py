"""What one planner batch knows of its goals, read and locked in a single round trip.

Most of what a planner does is the same few steps: record a worker's outcome, accept a verdict,
charge the tokens they report, dispatch what became ready, complete the goal. Asking the ledger
for the goal and its tasks before each of them costs a round trip every time, and round trips are
most of a planner's time. So at the start of a batch the planner locks every goal the batch
mentions (in goal order, so planners never deadlock) and reads their current plans' tasks and
outcomes; the common steps then read from here and keep it up to date, and their writes go out
pipelined, never waited for.

Anything else that happens to a goal (a retry, an escalation, a re-plan, a rollback, a budget
stop, a human's answer) *releases* it: from then on, until the batch ends, every read about that
goal goes to the ledger, which sees all the batch's writes in order.

A snapshot never outlives its transaction, but what it knew of a goal's tasks may: the goals it
still holds at the end of a batch are *kept* (``Kept``), and the next batch about one of them reads
only its goal row, not all its tasks again, as long as that row shows nothing else has changed the
goal since: no other planner's batch (``kept_by``), nothing outside a batch's snapshot
(``revision``). A busy goal's tasks were most of what a batch read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agents import events as ev
from agents.events import new_id
from agents.ledger.db import Connection, remember
from agents.planner import ledger as L  # noqa: N812
from agents.planner.decide import GoalRow, TaskRow, evolve

# A goal's text and input are left out: only planning reads them, planning is never one of the
# common steps, and an input can be as large as a whole plan.
_GOAL_COLUMNS = L.GOAL_COLUMNS.replace("text, input,", "'' as text, '{}'::jsonb as input,")
assert _GOAL_COLUMNS != L.GOAL_COLUMNS
# The goals, locked in goal order so planners never deadlock, with which planner keeps their
# plans (``Kept``).
_LOCK = (
    f"select {_GOAL_COLUMNS}, kept_by from goals where goal_id = any(%b) "  # noqa: S608
    "order by goal_id for update"
)
# The tasks of the goals whose kept plans are not current (``Kept.current``).
_TASKS = (
    f"select t.goal_id, {L.task_columns('t')}, a.result as outcome "  # noqa: S608
    "from goals g left join unnest(%b::text[], %b::bigint[]) as k(goal_id, revision) "
    "on k.goal_id = g.goal_id "
    "join tasks t on t.goal_id = g.goal_id and t.plan_version = g.plan_version "
    "left join attempts a on a.task_id = t.task_id and a.attempt = t.attempt "
    "where g.goal_id = any(%b) "
    "and (g.kept_by is distinct from %s or g.revision is distinct from k.revision) "
    "order by t.task_id"
)
# Kept plans at most: a planner's goals in flight, with room to spare (a chain's plan is a few
# kilobytes, a 20-task fan-out's some tens).
KEPT_GOALS = 2048


@dataclass
class Plan:
    """A goal's current tasks and their latest outcomes, as of the goal's ``revision``."""

    revision: int
    tasks: dict[str, TaskRow]
    outcomes: dict[str, Any]


class Kept:
    """The plans of goals as this planner's last committed batches left them.

    A kept plan is current while the goal's row says this planner keeps it (``kept_by``, which a
    batch of another planner takes over) and its revision is the one the plan was kept at:
    everything that changes a goal's tasks outside a planner's batch snapshot adds to it (a fired
    timer, a human's answer, a retry or escalation, a record-by-record retry of a failed batch).
    A batch that fails forgets every kept plan, since its snapshot changed them in place."""

    def __init__(self, most: int = KEPT_GOALS) -> None:
        self.owner = new_id()  # this planner, as long as it runs
        self._most = most
        self._plans: dict[str, Plan] = {}

    def __len__(self) -> int:
        return len(self._plans)

    def revisions(self, goal_ids: Iterable[str]) -> tuple[list[str], list[int]]:
        """The kept ones among ``goal_ids``, and their revisions."""
        kept = [(g, self._plans[g].revision) for g in goal_ids if g in self._plans]
        return [g for g, _ in kept], [r for _, r in kept]

    def current(self, goal: GoalRow, kept_by: str | None) -> Plan | None:
        """The goal's kept plan when nothing has changed it since (``goal``, ``kept_by``: its
        row as the batch locked it)."""
        plan = self._plans.get(goal.goal_id)
        if plan is None or kept_by != self.owner or plan.revision != goal.revision:
            return None
        return plan

    def keep(self, goal_id: str, plan: Plan | None) -> None:
        """Keep ``plan`` for the goal, or forget the goal (``None``)."""
        self._plans.pop(goal_id, None)
        if plan is not None:
            remember(self._plans, goal_id, plan, most=self._most)

    def forget(self) -> None:
        self._plans.clear()


class Snapshot:
    """The locked goals of a batch, their current plans' tasks and the tasks' latest outcomes,
    and the common steps' writes, held back to go out together (``flush``)."""

    def __init__(
        self,
        conn: Connection,
        goals: dict[str, GoalRow],
        tasks: dict[str, dict[str, TaskRow]],
        outcomes: dict[str, dict[str, Any]],
    ) -> None:
        self._conn = conn
        self._goals = goals
        self._tasks = tasks
        self._outcomes = outcomes  # by goal, then task
        self._asked: set[str] = set()
        self._elsewhere: set[str] = set()  # held goals the ledger says no batch here kept
        self._absent: set[str] = set()  # asked for, not in the ledger: goals submitted just now
        self._taken_in: list[L.Intake] = []
        self._recorded: list[L.Outcome] = []
        self._verdicts: list[ev.TaskEvaluated] = []
        self._succeeded: list[str] = []
        self._succeeded_at = datetime.now(UTC)
        self._dispatches: list[L.Dispatch] = []
        self._finished: list[L.Finish] = []
        self._charges: list[L.Charge] = []

    @classmethod
    def load(
        cls, conn: Connection, goal_ids: Collection[str], kept: Kept | None = None
    ) -> Snapshot:
        """Lock the goals and read their plans: the kept ones (``kept``) from memory when
        current, the others from the ledger, in the same round trip."""
        ids = sorted(set(goal_ids))
        if not ids:
            return cls(conn, {}, {}, {})
        known = kept.revisions(ids) if kept is not None else ([], [])
        owner = kept.owner if kept is not None else None
        with conn.cursor() as goals, conn.cursor() as tasks:
            goals.execute(_LOCK, (ids,))
            tasks.execute(_TASKS, (*known, ids, owner))
            rows = goals.fetchall()  # the goal's columns, then kept_by
            kept_by = {row[0]: row[-1] for row in rows}
            held = {row[0]: L.goal_from(row[:-1]) for row in rows}
            plans = {
                g: kept.current(goal, kept_by[g]) if kept else None for g, goal in held.items()
            }
            by_goal = {g: plan.tasks if plan else {} for g, plan in plans.items()}
            outcomes = {g: plan.outcomes if plan else {} for g, plan in plans.items()}
            for row in tasks.fetchall():  # goal_id, the task's columns, the outcome
                task = L.task_from(row[1:-1])
                by_goal[row[0]][task.task_id] = task
                outcomes[row[0]][task.task_id] = row[-1]
        snapshot = cls(conn, held, by_goal, outcomes)
        snapshot._asked = set(ids)
        snapshot._absent = set(ids) - set(held)
        snapshot._elsewhere = {g for g in held if kept_by[g] != owner}
        return snapshot

    # -- reading ---------------------------------------------------------------------------------

    def goal(self, goal_id: str) -> GoalRow:
        """A goal this snapshot holds (``holds``)."""
        return self._goals[goal_id]

    def tasks(self, goal_id: str, kind: str) -> list[TaskRow]:
        """A held goal's current tasks of ``kind``, in task order."""
        held = self._tasks[goal_id].values()
        return sorted((t for t in held if t.kind == kind), key=lambda t: t.task_id)

    def task(self, goal_id: str, task_id: str) -> TaskRow | None:
        return self._tasks.get(goal_id, {}).get(task_id)

    def holds(self, goal_id: str) -> bool:
        return goal_id in self._goals

    def is_new(self, goal_id: str) -> bool:
        """The ledger had no such goal when the batch began, and it was not taken in since."""
        return goal_id in self._absent

    def take_in(self, intake: L.Intake, goal: GoalRow) -> None:
        """A goal new to the ledger (``is_new``), planned in this batch (``goal``: its row once
        stored): held from now on, and stored with its plan by ``flush``."""
        self._taken_in.append(intake)
        self._absent.discard(goal.goal_id)
        self._goals[goal.goal_id] = goal
        self._tasks[goal.goal_id] = {t.task_id: t for t in intake.tasks}
        self._outcomes[goal.goal_id] = {}

    # -- the common steps ------------------------------------------------------------------------

    def record_outcome(self, event: L.Outcome, task: TaskRow) -> None:
        """``event`` answers ``task``'s current attempt (the caller checked)."""
        self._recorded.append(event)
        self._put(event.goal_id, evolve(task, status="evaluating"))
        self._outcomes[event.goal_id][task.task_id] = L.outcome_of(event)

    def record_verdict(self, event: ev.TaskEvaluated) -> None:
        self._verdicts.append(event)

    def succeed(self, goal_id: str, task: TaskRow, at: datetime) -> TaskRow:
        """The task is done, with its current attempt's result."""
        self._succeeded.append(task.task_id)
        self._succeeded_at = at  # one time for the batch's successes: they are milliseconds apart
        result = self._outcomes[goal_id].get(task.task_id)
        done = evolve(task, status="succeeded", result=result or {})
        self._put(goal_id, done)
        return done

    def dispatch(self, dispatch: L.Dispatch) -> None:
        self._dispatches.append(dispatch)
        task = dispatch.task
        sent = evolve(task, status="dispatched", attempt=dispatch.attempt)
        self._put(dispatch.goal_id, sent)
        self._outcomes[dispatch.goal_id][task.task_id] = None
        goal = self._goals[dispatch.goal_id]
        if task.kind == "action":
            self._goals[goal.goal_id] = evolve(goal, steps_used=goal.steps_used + 1)

    def charge(self, charge: L.Charge) -> None:
        """Tokens and cost spent on a held goal: counted in its row here, so the budget checks
        that follow see them, and written with the batch."""
        usage = charge.usage
        if not usage.spent:
            return
        self._charges.append(charge)
        goal = self._goals[charge.goal_id]
        self._goals[goal.goal_id] = evolve(
            goal,
            input_tokens=goal.input_tokens + usage.input_tokens,
            output_tokens=goal.output_tokens + usage.output_tokens,
            tokens=goal.tokens + usage.input_tokens + usage.output_tokens,
            cost_usd=goal.cost_usd + usage.cost_usd,
        )

    def finish(self, finish: L.Finish) -> None:
        self._finished.append(finish)
        goal = self._goals[finish.goal_id]
        self._goals[goal.goal_id] = evolve(goal, status=finish.status)

    def _put(self, goal_id: str, task: TaskRow) -> None:
        self._tasks[goal_id][task.task_id] = task

    # -- writing ---------------------------------------------------------------------------------

    def release(self, goal_id: str) -> None:
        """Something other than the common steps is about to change the goal: from now on it is
        read from the ledger, which first gets every write held back so far."""
        self.flush()
        self._absent.discard(goal_id)
        self._goals.pop(goal_id, None)
        self._tasks.pop(goal_id, None)
        self._outcomes.pop(goal_id, None)

    def keep(self, kept: Kept) -> None:
        """After the last ``flush``: keep the plans of the goals still held and going on, and
        forget any other the batch was about (a released goal's plan was not followed here);
        the ledger learns which goals' plans are now kept here. Should the commit fail after
        all, the planner forgets every kept plan."""
        claimed = []
        for goal_id in self._asked | self._goals.keys():
            goal = self._goals.get(goal_id)
            plan = None
            if goal is not None and goal.status in ("running", "waiting_human"):
                plan = Plan(goal.revision, self._tasks[goal_id], self._outcomes[goal_id])
                if goal_id in self._elsewhere:
                    claimed.append(goal_id)
            kept.keep(goal_id, plan)
        if claimed:
            L.keep_plans(self._conn, claimed, kept.owner)

    def flush(self) -> None:
        """Send the held-back writes, a few set-wise statements for the whole batch, in the
        order the steps happen to any one task: the goal's intake, outcome, verdict, success,
        next dispatch, and then the goal's end."""
        if self._taken_in:
            L.take_in(self._conn, self._taken_in)
        if self._recorded:
            self._flush_outcomes()
        if self._verdicts:
            L.insert_verdicts(self._conn, self._verdicts)
        if self._succeeded:
            L.succeed_all(self._conn, self._succeeded, self._succeeded_at)
        if self._dispatches:
            L.dispatch_all(self._conn, self._dispatches)
        if self._charges:
            L.add_usages(self._conn, self._charges)
        if self._finished:
            L.finish_goals(self._conn, self._finished)
        self._taken_in, self._recorded, self._verdicts, self._succeeded = [], [], [], []
        self._dispatches, self._finished, self._charges = [], [], []

    def _flush_outcomes(self) -> None:
        L.record_attempts(self._conn, self._recorded)
        # A task whose verdict came in the same batch goes straight to succeeded in ``flush``.
        done = set(self._succeeded)
        waiting = [e for e in self._recorded if e.task_id not in done]
        if waiting:
            L.mark_evaluating(self._conn, waiting)
