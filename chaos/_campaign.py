"""The run's one loop: submit goals into a window of goals in flight, answer their escalations,
cancel the goals meant to be cancelled, follow the results topic and drive the faults, polling
the ledger a few times a second until every goal ended or the deadline passed."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from agents.client import MeshClient
from chaos._faults import FaultKind, Faults
from chaos._observe import Conn, LedgerGoal, ResultsLog, ledger_goals, open_escalations
from chaos._scenarios import Customer, Scenario
from chaos._verdict import TERMINAL

log = logging.getLogger(__name__)

TICK_S = 0.25  # how often the loop looks at the ledger: goals take seconds, not milliseconds
PROGRESS_EVERY_S = 15.0
UNEXPECTED_ANSWER = "retry"  # lets a goal go on, so an unforeseen question does not stall it


@dataclass
class Goal:
    """One goal of the run, from before it is submitted to its end."""

    scenario: Scenario
    customer: Customer
    goal_id: str | None = None
    submitted_at: float | None = None
    status: str = "unsubmitted"
    cancelled: bool = False

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


def answer_for(scenario: Scenario, step_id: str | None) -> tuple[str, bool]:
    """The answer to an escalation, and whether the scenario expected it."""
    own = scenario.answer(step_id)
    return (own, True) if own is not None else (UNEXPECTED_ANSWER, False)


def should_cancel(goal: Goal, row: LedgerGoal) -> bool:
    """Cancel once the step the scenario names has succeeded, so there is work to roll back."""
    after = goal.scenario.cancel_after
    return after is not None and not goal.cancelled and not goal.ended and after in row.done_steps


class Campaign:
    """Steers the run's goals; the faults are ticked from here, on the same thread."""

    def __init__(
        self,
        *,
        client: MeshClient,
        conn: Conn,
        results: ResultsLog,
        faults: Faults,
        goals: Sequence[Goal],
        in_flight: int,
        window_age_s: float,
    ) -> None:
        self.goals = list(goals)
        self.answered = 0
        self.unexpected = 0
        self.cancels = 0
        self._client = client
        self._conn = conn
        self._results = results
        self._faults = faults
        self._in_flight = in_flight
        self._window_age_s = window_age_s
        self._by_id: dict[str, Goal] = {}
        self._replied: set[str] = set()
        self._next_progress = time.monotonic() + PROGRESS_EVERY_S

    def run(self, deadline: float) -> bool:
        """Submit and steer with faults on, until every goal ended (True) or ``deadline``."""
        while True:
            self._submit()
            self.steer(inject=True)
            if all(g.ended for g in self.goals):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(TICK_S)

    def steer(self, *, inject: bool) -> None:
        """One round: read the ledger, answer, cancel, follow the log, tick the faults."""
        rows = ledger_goals(self._conn, list(self._by_id))
        for goal_id, row in rows.items():
            goal = self._by_id[goal_id]
            goal.status = row.status
            if should_cancel(goal, row):
                self._cancel(goal)
        self._answer()
        self._results.drain()
        self._faults.tick(inject=inject)
        self._progress()

    def logged(self, goal: Goal) -> bool:
        """Whether the results topic has told the goal's end yet."""
        return goal.goal_id is not None and bool(self._results.ends(goal.goal_id))

    def _submit(self) -> None:
        now = time.monotonic()
        busy = sum(1 for g in self._by_id.values() if not g.ended and not self._aged(g, now))
        waiting = (g for g in self.goals if g.goal_id is None)
        for goal in waiting:
            if busy >= self._in_flight:
                return
            request = goal.scenario.goal(goal.customer)
            handle = self._client.submit(
                request.text,
                input=request.input,
                max_steps=request.max_steps,
                submitted_by="chaos",
            )
            goal.goal_id, goal.submitted_at, goal.status = handle.goal_id, now, "submitted"
            self._by_id[handle.goal_id] = goal
            busy += 1

    def _aged(self, goal: Goal, now: float) -> bool:
        """A goal in flight this long no longer holds a place in the window: it is likely stuck,
        and the rest of the run should go on (it is reported as stuck if it never ends)."""
        return goal.submitted_at is not None and now - goal.submitted_at > self._window_age_s

    def _answer(self) -> None:
        for question in open_escalations(self._conn, list(self._by_id)):
            if question.escalation_id in self._replied:
                continue  # answered; the planner has not taken the answer in yet
            goal = self._by_id[question.goal_id]
            action, expected = answer_for(goal.scenario, question.step_id)
            self._client.resolve(question.escalation_id, action, resolved_by="chaos")
            self._replied.add(question.escalation_id)
            if expected:
                self.answered += 1
            else:
                self.unexpected += 1
                log.warning(
                    "unexpected escalation of %s (%s) at step %s; answered %s",
                    question.goal_id,
                    goal.scenario.name,
                    question.step_id,
                    action,
                )

    def _cancel(self, goal: Goal) -> None:
        assert goal.goal_id is not None  # only goals the ledger knows are cancelled
        self._client.cancel(goal.goal_id, reason="cancelled mid-run by chaos", requested_by="chaos")
        goal.cancelled = True
        self.cancels += 1

    def _progress(self) -> None:
        if time.monotonic() < self._next_progress:
            return
        self._next_progress = time.monotonic() + PROGRESS_EVERY_S
        ended = sum(g.ended for g in self.goals)
        submitted = len(self._by_id)
        log.info(
            "%d/%d goals ended, %d in flight, %d kills, %d pauses",
            ended,
            len(self.goals),
            submitted - ended,
            self._faults.count(FaultKind.KILL),
            self._faults.count(FaultKind.PAUSE),
        )
