"""What one planner batch knows of its goals, read and locked in a single round trip.

Most of what a planner does is the same few steps: record a worker's outcome, accept a verdict,
dispatch what became ready, complete the goal. Asking the ledger for the goal and its tasks before
each of them costs a round trip every time, and round trips are most of a planner's time. So at the
start of a batch the planner locks every goal the batch mentions (in goal order, so planners never
deadlock) and reads their current plans' tasks and outcomes; the common steps then read from here
and keep it up to date, and their writes go out pipelined, never waited for.

Anything else that happens to a goal (a retry, an escalation, a re-plan, a rollback, a budget
stop, a human's answer) *releases* it: from then on, until the batch ends, every read about that
goal goes to the ledger, which sees all the batch's writes in order. The snapshot never outlives
its transaction.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row

from agents import events as ev
from agents.ledger.db import Connection
from agents.planner import ledger as L  # noqa: N812
from agents.planner.decide import GoalRow, TaskRow, evolve

# A goal's text and input are left out: only planning reads them, planning is never one of the
# common steps, and an input can be as large as a whole plan.
_GOAL_COLUMNS = L.GOAL_COLUMNS.replace("text, input,", "'' as text, '{}'::jsonb as input,")
assert _GOAL_COLUMNS != L.GOAL_COLUMNS


class Snapshot:
    """The locked goals of a batch, their current plans' tasks and the tasks' latest outcomes,
    and the common steps' writes, held back to go out together (``flush``)."""

    def __init__(
        self,
        conn: Connection,
        goals: dict[str, GoalRow],
        tasks: dict[str, dict[str, TaskRow]],
        outcomes: dict[str, Any],
    ) -> None:
        self._conn = conn
        self._goals = goals
        self._tasks = tasks
        self._outcomes = outcomes
        self._absent: set[str] = set()  # asked for, not in the ledger: goals submitted just now
        self._recorded: list[L.Outcome] = []
        self._verdicts: list[ev.TaskEvaluated] = []
        self._succeeded: list[str] = []
        self._succeeded_at = datetime.now(UTC)
        self._dispatches: list[L.Dispatch] = []
        self._finished: list[L.Finish] = []

    @classmethod
    def load(cls, conn: Connection, goal_ids: Collection[str]) -> Snapshot:
        ids = sorted(set(goal_ids))
        if not ids:
            return cls(conn, {}, {}, {})
        with conn.cursor(row_factory=dict_row) as goals, conn.cursor() as tasks:
            goals.execute(
                f"select {_GOAL_COLUMNS} from goals where goal_id = any(%b) "  # noqa: S608
                "order by goal_id for update",
                (ids,),
            )
            tasks.execute(
                f"select t.goal_id, {L.task_columns('t')}, a.result as outcome "  # noqa: S608
                "from goals g join tasks t on t.goal_id = g.goal_id "
                "and t.plan_version = g.plan_version "
                "left join attempts a on a.task_id = t.task_id and a.attempt = t.attempt "
                "where g.goal_id = any(%b) order by t.task_id",
                (ids,),
            )
            held = {row["goal_id"]: GoalRow(**row) for row in goals.fetchall()}
            by_goal: dict[str, dict[str, TaskRow]] = {goal_id: {} for goal_id in held}
            outcomes: dict[str, Any] = {}
            for row in tasks.fetchall():  # goal_id, the task's columns, the outcome
                task = L.task_from(row[1:-1])
                by_goal[row[0]][task.task_id] = task
                outcomes[task.task_id] = row[-1]
        snapshot = cls(conn, held, by_goal, outcomes)
        snapshot._absent = set(ids) - set(held)
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

    def adopt(self, goal: GoalRow, tasks: list[TaskRow]) -> None:
        """A goal this batch just stored, with its plan's tasks: held from now on."""
        self._absent.discard(goal.goal_id)
        self._goals[goal.goal_id] = goal
        self._tasks[goal.goal_id] = {t.task_id: t for t in tasks}

    # -- the common steps ------------------------------------------------------------------------

    def record_outcome(self, event: L.Outcome, task: TaskRow) -> None:
        """``event`` answers ``task``'s current attempt (the caller checked)."""
        self._recorded.append(event)
        self._put(event.goal_id, evolve(task, status="evaluating"))
        self._outcomes[task.task_id] = L.outcome_of(event)

    def record_verdict(self, event: ev.TaskEvaluated) -> None:
        self._verdicts.append(event)

    def succeed(self, goal_id: str, task: TaskRow, at: datetime) -> TaskRow:
        """The task is done, with its current attempt's result."""
        self._succeeded.append(task.task_id)
        self._succeeded_at = at  # one time for the batch's successes: they are milliseconds apart
        done = evolve(task, status="succeeded", result=self._outcomes.get(task.task_id) or {})
        self._put(goal_id, done)
        return done

    def dispatch(self, dispatch: L.Dispatch) -> None:
        self._dispatches.append(dispatch)
        task = dispatch.task
        sent = evolve(task, status="dispatched", attempt=dispatch.attempt)
        self._put(dispatch.goal_id, sent)
        self._outcomes[task.task_id] = None
        goal = self._goals[dispatch.goal_id]
        if task.kind == "action":
            self._goals[goal.goal_id] = evolve(goal, steps_used=goal.steps_used + 1)

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

    def flush(self) -> None:
        """Send the held-back writes, a few set-wise statements for the whole batch, in the
        order the steps happen to any one task: outcome, verdict, success, next dispatch, and
        then the goal's end."""
        if self._recorded:
            # A task whose verdict came in the same batch goes straight to succeeded below.
            done = set(self._succeeded)
            L.record_attempts(self._conn, self._recorded)
            waiting = [e for e in self._recorded if e.task_id not in done]
            if waiting:
                L.mark_evaluating(self._conn, waiting)
        if self._verdicts:
            L.insert_verdicts(self._conn, self._verdicts)
        if self._succeeded:
            L.succeed_all(self._conn, self._succeeded, self._succeeded_at)
        if self._dispatches:
            L.dispatch_all(self._conn, self._dispatches)
        if self._finished:
            L.finish_goals(self._conn, self._finished)
        self._recorded, self._verdicts, self._succeeded = [], [], []
        self._dispatches, self._finished = [], []
