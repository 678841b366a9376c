"""The closed sets of the mesh: statuses, decisions, kinds, policies and attempt outcomes.

They are ``StrEnum`` so that they are stored in the ledger and carried in events as their plain
values; the Avro schemas keep these fields strings (turning a string into an Avro enum is not a
FULL_TRANSITIVE change), and the models check the symbols on decode.
"""

from __future__ import annotations

from enum import StrEnum


class GoalStatus(StrEnum):
    """Where a goal is in its life."""

    PLANNING = "planning"
    """Taken in; waiting for its first plan."""
    RUNNING = "running"
    """Its plan's steps are being carried out."""
    WAITING_HUMAN = "waiting_human"
    """A question to a human is open; independent steps go on meanwhile."""
    COMPENSATING = "compensating"
    """It is ending: its effects are being rolled back."""
    COMPLETED = "completed"
    """Every step succeeded."""
    FAILED = "failed"
    """It ended without success (rolled back per its policy)."""
    CANCELLED = "cancelled"
    """A user stopped it (rolled back per its policy)."""

    @property
    def live(self) -> bool:
        """Not ended yet."""
        return self not in _ENDED


_ENDED = frozenset({GoalStatus.COMPLETED, GoalStatus.FAILED, GoalStatus.CANCELLED})


class TaskStatus(StrEnum):
    """Where one plan step (or compensation) is."""

    PENDING = "pending"
    """Waiting for its dependencies or its turn."""
    DISPATCHED = "dispatched"
    """An attempt was handed to the workers."""
    EVALUATING = "evaluating"
    """The attempt's outcome is in; its verdict is awaited."""
    WAITING_RETRY = "waiting_retry"
    """A retry is due on a durable timer."""
    WAITING_HUMAN = "waiting_human"
    """A human decides what happens next."""
    SUCCEEDED = "succeeded"
    """Done; its result is kept."""
    FAILED = "failed"
    """Failed for good."""
    CANCELLED = "cancelled"
    """Will not run: its goal ended first."""
    COMPENSATED = "compensated"
    """Its effects were undone."""
    SUPERSEDED = "superseded"
    """Replaced by a step of a newer plan version."""


class TaskKind(StrEnum):
    """What a task is for."""

    ACTION = "action"
    """A step of the plan."""
    COMPENSATION = "compensation"
    """The undoing of an action's effect during a rollback."""


class Decision(StrEnum):
    """The evaluator's verdict on one attempt."""

    ACCEPT = "accept"
    """The result is good: the step succeeded."""
    RETRY = "retry"
    """Run the step again (after a backoff)."""
    REPLAN = "replan"
    """Ask for a new plan version that reaches the goal another way."""
    ESCALATE = "escalate"
    """Ask a human."""
    FAIL = "fail"
    """The step failed for good: end the goal."""
    COMPENSATE = "compensate"
    """End the goal and roll it back (as ``fail``)."""


class Answer(StrEnum):
    """A human's answer to an escalation (or the default an unanswered one takes)."""

    APPROVE = "approve"
    """Take the step as succeeded and go on."""
    RETRY = "retry"
    """Run the step again, with a fresh retry budget."""
    ABORT = "abort"
    """Fail the step: the goal ends and rolls back (or, for a compensation, the rollback stops)."""
    SET = "set"
    """Run the step again with some arguments changed (a new idempotency key)."""


class CompensationPolicy(StrEnum):
    """What a failed or cancelled goal rolls back."""

    ALL = "all"
    """Every step that may have taken effect."""
    DEPENDENTS = "dependents"
    """Only the failed step and what was built on it."""
    NONE = "none"
    """Nothing: effects stay."""


class Outcome(StrEnum):
    """How an attempt ended, as far as its effect is concerned."""

    SUCCEEDED = "succeeded"
    """The tool finished and reported its result: its effect happened."""
    FAILED = "failed"
    """The tool said it did nothing (validation, a refusal, a transient error before acting)."""
    UNKNOWN = "unknown"
    """Nobody knows: lease expired, timed out, worker died, result lost, part done. It may have
    taken effect, so a rollback undoes it and a retry reuses its idempotency key."""


class TimerKind(StrEnum):
    """What a durable timer does when it fires."""

    RETRY = "retry"
    """Dispatch a step's next attempt."""
    ESCALATION_EXPIRY = "escalation_expiry"
    """Apply an unanswered escalation's default action."""
    DEADLINE = "deadline"
    """End a goal that is past its deadline, whatever it waits on."""


NO_EFFECT_CATEGORIES = frozenset(
    {
        "transient",
        "permanent",
        "invalid_arguments",
        "unknown_tool",
        "forbidden",
        "cancelled",
        "superseded",
    }
)
"""Failure categories whose tools promise they did nothing. Any other category (``timeout``,
``lease_expired``, ``partial``, a tool's unexpected exception) may have taken effect."""


def outcome_of(completed: bool, category: str | None) -> Outcome:
    """An attempt's outcome from its report: completed, or failed with ``category``."""
    if completed:
        return Outcome.SUCCEEDED
    return Outcome.FAILED if category in NO_EFFECT_CATEGORIES else Outcome.UNKNOWN
