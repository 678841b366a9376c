"""The planner's decider: ``decide(state, input, context) -> Decided(state, changes, commands)``.

Pure: no I/O, no clock, no randomness of its own (the context brings the time and a random
draw). The shell (``agents.planner.agent``) loads a batch's goal states, feeds each input here,
carries out the commands and writes the changes. Each policy lives in a small module of its own
(``budget``, ``retry``, ``rollback``, ``keys``); this module says which applies when.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agents import events as ev
from agents.enums import (
    CompensationPolicy,
    Decision,
    GoalStatus,
    Outcome,
    TaskKind,
    TaskStatus,
    TimerKind,
    outcome_of,
)
from agents.planner import rollback
from agents.planner.budget import budget_problem, busy, one_at_a_time
from agents.planner.changes import (
    AskForPlan,
    AttemptPut,
    Change,
    Charged,
    Command,
    Decided,
    EscalationClosed,
    EscalationOpened,
    GoalPut,
    Input,
    PlanAdded,
    PlanReady,
    PlanRefused,
    Publish,
    RaiseCancelFlag,
    Refused,
    TaskPut,
    TimerFired,
    TimerSet,
    VerdictAdded,
)
from agents.planner.keys import COMPENSATION_FENCE, action_fence, idempotency_key
from agents.planner.plan import resolve_arguments
from agents.planner.retry import INFRA_CATEGORIES, Again, Limits, early_stop, next_attempt
from agents.planner.state import (
    Attempt,
    Ending,
    Goal,
    GoalState,
    Task,
    evolve,
    results_by_step,
    with_effect,
    without_attempt,
)
from agents.tools.base import HUMAN_RETRY, Registry

AGENT = "planner"
ESCALATION_OPTIONS = ["approve", "retry", "abort", "set"]
_ANSWERS = frozenset(ESCALATION_OPTIONS)
_WAITING = (TaskStatus.PENDING, TaskStatus.WAITING_RETRY, TaskStatus.WAITING_HUMAN)


@dataclass(frozen=True)
class Rules:
    """What the decider knows besides the goal: the tool catalogue and the limits."""

    registry: Registry
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Context:
    """The rules, the time of the decision, and a uniform draw in [0, 1) for jitter."""

    rules: Rules
    now: datetime
    draw: float = 0.5


def decide(state: GoalState | None, event: Input, context: Context) -> Decided:
    """The planner's answer to ``event`` about the goal in ``state`` (None: not in the ledger)."""
    if isinstance(event, ev.GoalSubmitted):
        return _submitted(state, event, context)
    if state is None:
        return Decided(None)  # not a goal the ledger holds: nothing to decide, nothing to end
    turn = _Turn(state, context, _cause(event))
    _HANDLERS[type(event)](turn, event)
    return turn.decided()


def _cause(event: Input) -> str | None:
    if isinstance(event, ev.Event):
        return event.event_id
    if isinstance(event, PlanReady | PlanRefused | Refused):
        return event.cause_id
    return str(event.payload.get("cause") or "") or None


class _Turn:
    """One decision in the making: the state as it evolves, and what it has decided so far."""

    def __init__(self, state: GoalState, context: Context, cause_id: str | None) -> None:
        self.state = state
        self.context = context
        self.cause_id = cause_id
        self.registry = context.rules.registry
        self.limits = context.rules.limits
        self._changes: list[Change] = []
        self._commands: list[Command] = []
        self._goal_put: GoalPut | None = None
        self._goal_dirty = False
        self._tasks_dirty: dict[str, bool] = {}  # task id -> new
        self._attempts: dict[tuple[str, int], AttemptPut] = {}

    @property
    def goal(self) -> Goal:
        return self.state.goal

    @property
    def now(self) -> datetime:
        return self.context.now

    # -- recording ------------------------------------------------------------------------------

    def set_goal(self, **changes: Any) -> Goal:
        self.state = self.state.with_goal(evolve(self.goal, **changes))
        self._goal_dirty = True
        return self.goal

    def new_goal(self, put: GoalPut) -> None:
        self._goal_put = put

    def put_task(self, task: Task, *, new: bool = False) -> Task:
        self.state = self.state.with_task(task)
        self._tasks_dirty[task.task_id] = self._tasks_dirty.get(task.task_id, False) or new
        return task

    def set_task(self, task: Task, **changes: Any) -> Task:
        return self.put_task(evolve(self.state.tasks[task.task_id], **changes))

    def put_attempt(self, put: AttemptPut) -> None:
        key = (put.task_id, put.attempt.number)
        earlier = self._attempts.get(key)
        self._attempts[key] = evolve(put, new=put.new or (earlier is not None and earlier.new))

    def change(self, change: Change) -> None:
        self._changes.append(change)

    def command(self, command: Command) -> None:
        self._commands.append(command)

    def publish(self, event: ev.Event) -> None:
        self._commands.append(Publish(event))

    def charge(self, source: str, usage: ev.Usage) -> None:
        if not usage.spent:
            return
        goal = self.goal
        self.set_goal(
            input_tokens=goal.input_tokens + usage.input_tokens,
            output_tokens=goal.output_tokens + usage.output_tokens,
            cost_usd=goal.cost_usd + usage.cost_usd,
        )
        self.change(Charged(goal.goal_id, source, usage))

    def envelope(self) -> ev.Envelope:
        return ev.Envelope(
            goal_id=self.goal.goal_id,
            producer_agent=AGENT,
            correlation_id=self.goal.goal_id,
            causation_id=self.cause_id or None,
            occurred_at=self.now,
        )

    def decided(self) -> Decided:
        puts: list[Change] = []
        changed = self._goal_dirty or self._tasks_dirty or self._attempts or self._changes
        if self._goal_put is not None:
            puts.append(evolve(self._goal_put, goal=self.goal))
        elif changed:  # the goal's row counts every change of its state (its version)
            puts.append(GoalPut(self.goal))
        puts += [TaskPut(self.state.tasks[t], new) for t, new in self._tasks_dirty.items()]
        puts += list(self._attempts.values())
        return Decided(self.state, tuple(puts + self._changes), tuple(self._commands))


# -- goals ---------------------------------------------------------------------------------------


def _submitted(state: GoalState | None, event: ev.GoalSubmitted, context: Context) -> Decided:
    if state is not None:
        return Decided(state)  # submitted again: already in hand
    goal = Goal(
        goal_id=event.goal_id,
        status=GoalStatus.PLANNING,
        max_steps=event.max_steps,
        submitted_at=event.envelope.occurred_at,
        max_tokens=event.max_tokens,
        budget_usd=event.budget_usd,
        deadline_at=event.deadline_at,
        confidence_threshold=event.confidence_threshold,
        max_replans=event.max_replans,
        compensation_policy=CompensationPolicy(event.compensation_policy),
    )
    turn = _Turn(GoalState(goal), context, event.event_id)
    turn.new_goal(
        GoalPut(goal, True, event.text, event.input, event.submitted_by),
    )
    if goal.deadline_at is not None:
        turn.change(TimerSet(goal.goal_id, TimerKind.DEADLINE, goal.deadline_at))
    problem = budget_problem(goal, context.now, counting_steps=False)
    if problem is not None:
        _end(turn, *problem)
    else:
        turn.command(AskForPlan(goal.goal_id, event.event_id))
    return turn.decided()


def _plan_ready(turn: _Turn, event: PlanReady) -> None:
    turn.charge("plan", event.usage)
    goal = turn.goal
    if not goal.live or goal.ending is not None or event.replaces != goal.plan_version:
        return  # the goal ended, or another plan replaced the one this was asked to
    version = goal.plan_version + 1
    steps = event.draft.steps
    tasks = [
        Task(
            task_id=f"{goal.goal_id}.{version}.{s.id}",
            goal_id=goal.goal_id,
            plan_version=version,
            step_id=s.id,
            tool=s.tool,
            arguments=dict(s.arguments),
            depends_on=tuple(s.depends_on),
            pool=turn.registry.get(s.tool).pool,
        )
        for s in steps
    ]
    turn.change(
        PlanAdded(
            goal.goal_id,
            version,
            event.engine,
            event.draft.rationale,
            [s.model_dump() for s in steps],
            event.reason,
        )
    )
    kept = _supersede(turn) if version > 1 else {}
    for task in tasks:
        done = kept.get((task.step_id, task.tool))
        if done is not None:
            turn.set_task(done, effects=())  # they go with the step to the new plan
        turn.put_task(_carried(task, done), new=True)
    turn.set_goal(
        plan_version=version,
        status=GoalStatus.WAITING_HUMAN if turn.goal.escalations else GoalStatus.RUNNING,
        replans=goal.replans + (1 if version > 1 else 0),
    )
    _advance(turn)


def _supersede(turn: _Turn) -> dict[tuple[str, str], Task]:
    """Retire the unfinished steps of the current plan (a new one replaces them); their steps
    that succeeded are handed to the new plan (by step id and tool), effects and all."""
    kept: dict[tuple[str, str], Task] = {}
    for task in turn.state.current():
        if task.status is TaskStatus.SUCCEEDED:
            kept[(task.step_id, task.tool)] = task
        elif task.status not in (TaskStatus.FAILED, TaskStatus.COMPENSATED):
            _stop(turn, task, TaskStatus.SUPERSEDED)
    _drop_escalations(turn, keep_waiting=True)
    return kept


def _carried(task: Task, done: Task | None) -> Task:
    if done is None:
        return task
    return evolve(
        task,
        status=TaskStatus.SUCCEEDED,
        result=done.result,
        attempt=done.attempt,
        key=done.key,
        current=done.current,
        effects=done.effects,
    )


def _plan_refused(turn: _Turn, event: PlanRefused) -> None:
    turn.charge("plan", event.usage)
    if event.replaces == turn.goal.plan_version:
        _end(turn, event.category, event.message)


def _cancelled(turn: _Turn, event: ev.GoalCancelled) -> None:
    if not turn.goal.live or turn.goal.ending is not None:
        return
    message = event.reason or f"cancelled by {event.requested_by}"
    _end(turn, "cancelled", message, status=GoalStatus.CANCELLED)


def _refused(turn: _Turn, event: Refused) -> None:
    goal = turn.goal
    if not goal.live:
        return
    message = f"{event.category}: {event.reason}"
    if goal.ending is not None:  # the rollback itself broke: report, do not loop
        _finish_failed(turn, goal.ending.status, "internal_error", message)
    else:
        _end(turn, "internal_error", message)


# -- outcomes and verdicts -------------------------------------------------------------------------


def _outcome(turn: _Turn, event: ev.TaskCompleted | ev.TaskFailed) -> None:
    task = turn.state.task(event.task_id)
    if task is None or task.attempt != event.attempt:
        return  # an older attempt's: the first outcome of each attempt is the one kept
    current = task.current
    if task.status is not TaskStatus.DISPATCHED:
        if current is not None and current.outcome is None:  # superseded while it ran
            _late(turn, task, _outcome_of(current, event), event)
        return
    attempt = _outcome_of(current or Attempt(task.attempt, task.key, 0, {}), event)
    effects = task.effects
    if attempt.outcome is not Outcome.FAILED:
        effects = with_effect(effects, attempt)
    task = turn.set_task(task, status=TaskStatus.EVALUATING, current=attempt, effects=effects)
    turn.put_attempt(_recorded(task.task_id, task, event))
    if attempt.category in INFRA_CATEGORIES and task.action:  # the budget counts tools' work
        turn.set_goal(steps_used=max(0, turn.goal.steps_used - 1))
    turn.charge(f"tool:{event.tool}", event.usage)


def _late(
    turn: _Turn, task: Task, attempt: Attempt, event: ev.TaskCompleted | ev.TaskFailed
) -> None:
    """The outcome of an attempt superseded while it ran (counted as maybe-done then): kept on
    its row, and its effect, if it says it did nothing, no longer counted."""
    if attempt.outcome is Outcome.FAILED:
        effects = without_attempt(task.effects, attempt)
    else:
        effects = with_effect(task.effects, attempt)
    task = turn.set_task(task, current=attempt, effects=effects)
    turn.put_attempt(_recorded(task.task_id, task, event))


def _outcome_of(current: Attempt, event: ev.TaskCompleted | ev.TaskFailed) -> Attempt:
    """The attempt with the outcome ``event`` reports."""
    if isinstance(event, ev.TaskCompleted):
        category, message, result = None, None, event.result
    else:
        category, message, result = event.category, event.message, event.details
    outcome = outcome_of(category is None, category)
    return evolve(current, outcome=outcome, category=category, message=message, result=result)


def _recorded(task_id: str, task: Task, event: ev.TaskCompleted | ev.TaskFailed) -> AttemptPut:
    assert task.current is not None
    return AttemptPut(
        task_id,
        task.current,
        worker_id=event.worker_id,
        started_at=event.started_at,
        finished_at=event.finished_at,
        usage=event.usage,
    )


def _verdict(turn: _Turn, event: ev.TaskEvaluated) -> None:
    task = turn.state.task(event.task_id)
    if task is None or task.status is not TaskStatus.EVALUATING or task.attempt != event.attempt:
        return  # a verdict on an attempt that is no longer current
    turn.change(VerdictAdded(event))
    turn.charge("evaluate", event.usage)
    decision = Decision(event.decision)
    if task.kind is TaskKind.COMPENSATION:
        _compensation_verdict(turn, task, decision, event)
    elif turn.goal.ending is None:
        _count(turn, task, decision)
        _action_verdict(turn, task, decision, event)


def _count(turn: _Turn, task: Task, decision: Decision) -> None:
    """Keep the early-termination counters: verdicts since an accept, failures by kind. An
    attempt lost to the infrastructure counts in neither: it says nothing of the goal."""
    goal = turn.goal
    accepted = decision is Decision.ACCEPT
    failures = goal.failures
    current = task.current
    if current is not None and current.category in INFRA_CATEGORIES:
        return
    if not accepted and current is not None and current.outcome is not Outcome.SUCCEEDED:
        signature = f"{current.category}: {current.message or ''}"
        failures = {**failures, signature: failures.get(signature, 0) + 1}
    turn.set_goal(since_accept=0 if accepted else goal.since_accept + 1, failures=failures)


def _action_verdict(turn: _Turn, task: Task, decision: Decision, event: ev.TaskEvaluated) -> None:
    if decision is Decision.ACCEPT:
        _succeed(turn, task)
        _advance(turn)
    elif decision is Decision.RETRY:
        _retry(turn, task, event)
    elif decision is Decision.ESCALATE:
        _escalate(turn, task, event.reason)
    elif decision is Decision.REPLAN:
        _replan(turn, task, event.reason)
    else:
        turn.set_task(task, status=TaskStatus.FAILED)
        _end(turn, "task_failed", f"step {task.step_id} failed: {event.reason}", failed=task)


def _compensation_verdict(
    turn: _Turn, task: Task, decision: Decision, event: ev.TaskEvaluated
) -> None:
    if decision is Decision.ACCEPT:
        _succeed(turn, task)
        _advance(turn)
    elif decision is Decision.RETRY:
        _retry(turn, task, event)
    else:
        _escalate(turn, task, f"compensation {task.step_id} failed: {event.reason}")


def _succeed(turn: _Turn, task: Task) -> None:
    """The step is done: with its attempt's result, or (a human approved a step whose attempt
    did not succeed) with none."""
    current = turn.state.tasks[task.task_id].current
    done = current is not None and current.outcome is Outcome.SUCCEEDED
    result = dict(current.result or {}) if done and current is not None else {}
    task = turn.set_task(task, status=TaskStatus.SUCCEEDED, result=result)
    original = turn.state.task(task.compensates) if task.compensates else None
    if original is not None:
        turn.set_task(original, status=TaskStatus.COMPENSATED)


def _retry(turn: _Turn, task: Task, verdict: ev.TaskEvaluated) -> None:
    stop = early_stop(turn.goal, turn.limits) if task.action else None
    if stop is not None:
        turn.set_task(task, status=TaskStatus.FAILED)
        _end(turn, *stop, failed=task)
        return
    policy = turn.registry.get(task.tool).retry
    nxt = next_attempt(task, policy, turn.limits, turn.context.draw, verdict.reason)
    if not isinstance(nxt, Again):
        if nxt.fail:
            turn.set_task(task, status=TaskStatus.FAILED)
            _end(turn, "retries_exhausted", nxt.reason, failed=task)
        else:
            _escalate(turn, task, nxt.reason)
        return
    semantic = task.current is not None and task.current.outcome is Outcome.SUCCEEDED
    task = turn.set_task(
        task,
        status=TaskStatus.WAITING_RETRY,
        floor=task.floor + (1 if nxt.infra else 0),
        infra_losses=task.infra_losses + (1 if nxt.infra else 0),
        generation=task.generation + (1 if semantic and task.action else 0),
    )
    # A call lost to the infrastructure is repeated as it was (a human's go-ahead included).
    lost = task.current.feedback if nxt.infra and task.current is not None else None
    payload = {
        "attempt": task.attempt,
        "feedback": lost if nxt.infra else verdict.feedback,
        "cause": verdict.event_id,
        "delay_s": nxt.delay_s,
    }
    due = turn.now + timedelta(seconds=nxt.delay_s)
    turn.change(TimerSet(turn.goal.goal_id, TimerKind.RETRY, due, task.task_id, payload=payload))
    _meanwhile(turn, task)


def _replan(turn: _Turn, task: Task, reason: str) -> None:
    turn.set_task(task, status=TaskStatus.FAILED)
    goal = turn.goal
    if goal.replans >= goal.max_replans:
        message = f"step {task.step_id} failed after {goal.replans} re-plan(s)"
        _end(turn, "replans_exhausted", message, failed=task)
        return
    problem = budget_problem(goal, turn.now, counting_steps=False)
    if problem is not None:
        _end(turn, *problem)
        return
    done = [t.step_id for t in turn.state.current() if t.status is TaskStatus.SUCCEEDED]
    context = (
        f"Plan version {goal.plan_version} failed at step {task.step_id} ({task.tool}): "
        f"{reason}. Completed steps, kept as they are: {', '.join(done) or 'none'}. "
        "Propose a plan that reaches the goal another way."
    )
    turn.command(AskForPlan(goal.goal_id, turn.cause_id or "", context, goal.plan_version))


# -- escalations ---------------------------------------------------------------------------------


def _escalate(turn: _Turn, task: Task, reason: str) -> None:
    goal = turn.goal
    current = task.current
    escalation_id = _escalation_id(turn.cause_id, task.task_id)
    expires = turn.now + timedelta(seconds=turn.limits.escalation_ttl_s)
    raised = ev.EscalationRaised(
        envelope=turn.envelope(),
        escalation_id=escalation_id,
        task_id=task.task_id,
        reason=reason,
        evidence=_evidence(task, current),
        options=ESCALATION_OPTIONS,
        expires_at=expires,
        default_action=turn.limits.escalation_default,
    )
    turn.change(EscalationOpened(raised))
    turn.publish(raised)
    turn.set_task(task, status=TaskStatus.WAITING_HUMAN)
    turn.set_goal(
        status=GoalStatus.WAITING_HUMAN,
        escalations={**goal.escalations, escalation_id: task.task_id},
    )
    turn.change(
        TimerSet(goal.goal_id, TimerKind.ESCALATION_EXPIRY, expires, escalation_id=escalation_id)
    )
    _meanwhile(turn, task)


def _meanwhile(turn: _Turn, task: Task) -> None:
    """While a step waits (for a retry, for a human), independent steps go on: a goal that runs
    one step at a time sends the next ready one now."""
    if task.action and turn.goal.ending is None and one_at_a_time(turn.goal):
        _dispatch(turn, _ready(turn.state.current()), None)


def _escalation_id(cause_id: str | None, task_id: str) -> str:
    """The same question asked for the same cause has the same id (a replayed decision)."""
    return hashlib.sha256(f"{cause_id}|{task_id}".encode()).hexdigest()[:32]


def _evidence(task: Task, current: Attempt | None) -> dict[str, Any]:
    return {
        "step": task.step_id,
        "tool": task.tool,
        "attempt": task.attempt,
        "arguments": dict(current.arguments) if current is not None else {},
        "outcome": current.outcome if current is not None else None,
        "category": current.category if current is not None else None,
        "message": current.message if current is not None else None,
        "result": dict(current.result or {}) if current is not None else None,
    }


def _resolved(turn: _Turn, event: ev.EscalationResolved) -> None:
    task_id = turn.goal.escalations.get(event.escalation_id)
    if task_id is None or event.action not in _ANSWERS:
        return  # not an open question of this goal (answered, expired, another goal's)
    turn.change(
        EscalationClosed(
            event.escalation_id, "resolved", event.action, event.values, event.resolved_by
        )
    )
    _answer(turn, event.escalation_id, task_id, event.action, event.values)


def _answer(
    turn: _Turn, escalation_id: str, task_id: str, action: str, values: Mapping[str, Any]
) -> None:
    """Carry out a human's answer (or the expiry's default action) on the waiting task."""
    goal = turn.goal
    left = {k: v for k, v in goal.escalations.items() if k != escalation_id}
    status = goal.status
    if goal.live:
        status = (
            GoalStatus.COMPENSATING
            if goal.ending is not None
            else GoalStatus.WAITING_HUMAN
            if left
            else GoalStatus.RUNNING
        )
    turn.set_goal(escalations=left, status=status)
    task = turn.state.task(task_id)
    if task is None or task.status is not TaskStatus.WAITING_HUMAN or not goal.live:
        return
    if action == "approve":
        _succeed(turn, task)
        _advance(turn)
    elif action in ("retry", "set"):
        _human_retry(turn, task, values if action == "set" else {})
    else:
        _abort(turn, task)


def _human_retry(turn: _Turn, task: Task, values: Mapping[str, Any]) -> None:
    """Run the step again with a fresh budget: the tool's attempts, the infrastructure's, and
    the goal's early-termination counters start afresh (a human asked for more tries)."""
    turn.set_goal(failures={}, since_accept=0)
    task = turn.set_task(
        task,
        arguments={**task.arguments, **values},
        generation=task.generation + (1 if values else 0),
        floor=task.attempt,
        infra_losses=0,
    )
    _dispatch(turn, [task], HUMAN_RETRY + (f", with {dict(values)}" if values else ""))


def _abort(turn: _Turn, task: Task) -> None:
    turn.set_task(task, status=TaskStatus.FAILED)
    ending = turn.goal.ending
    if task.kind is TaskKind.COMPENSATION and ending is not None:  # stop rolling back
        message = f"rollback stopped at {task.step_id}; before that: {ending.message}"
        _finish_failed(turn, ending.status, "compensation_aborted", message)
        return
    _end(turn, "aborted", f"step {task.step_id} aborted", failed=task)


# -- timers --------------------------------------------------------------------------------------


def _timer(turn: _Turn, event: TimerFired) -> None:
    goal = turn.goal
    if not goal.live:
        return
    if event.kind is TimerKind.DEADLINE:
        if goal.ending is None and goal.deadline_at is not None:
            _end(turn, "deadline", f"the goal's deadline {goal.deadline_at.isoformat()} passed")
    elif event.kind is TimerKind.ESCALATION_EXPIRY:
        _expired(turn, event.escalation_id or "")
    else:
        task = turn.state.task(event.task_id or "")
        due = task is not None and task.status is TaskStatus.WAITING_RETRY
        if task is not None and due and task.attempt == event.payload.get("attempt"):
            _dispatch(turn, [task], event.payload.get("feedback"))


def _expired(turn: _Turn, escalation_id: str) -> None:
    task_id = turn.goal.escalations.get(escalation_id)
    if task_id is None:
        return
    default = turn.limits.escalation_default
    turn.change(EscalationClosed(escalation_id, "expired", default, {}, "expiry"))
    _answer(turn, escalation_id, task_id, default, {})


# -- moving forward ------------------------------------------------------------------------------


def _ready(tasks: Sequence[Task]) -> list[Task]:
    """Pending tasks whose dependencies have all succeeded, in plan order."""
    done = {t.step_id for t in tasks if t.status is TaskStatus.SUCCEEDED}
    return [t for t in tasks if t.status is TaskStatus.PENDING and set(t.depends_on) <= done]


def _all_succeeded(tasks: Sequence[Task]) -> bool:
    return bool(tasks) and all(t.status is TaskStatus.SUCCEEDED for t in tasks)


def _advance(turn: _Turn) -> None:
    goal = turn.goal
    if goal.ending is not None:
        undo = turn.state.current(TaskKind.COMPENSATION)
        if all(t.status is TaskStatus.SUCCEEDED for t in undo):
            _finish_failed(turn, goal.ending.status, goal.ending.category, goal.ending.message)
        else:
            _dispatch(turn, _ready(undo), None)
        return
    tasks = turn.state.current()
    if _all_succeeded(tasks):
        _complete(turn, tasks)
    else:
        _dispatch(turn, _ready(tasks), None)


def _dispatch(turn: _Turn, ready: Sequence[Task], feedback: str | None) -> None:
    sent = False
    for task in ready:
        if task.action:
            goal = turn.goal
            if goal.ending is not None:
                return  # a step before this one ended the goal
            if one_at_a_time(goal) and (sent or busy(turn.state.current())):
                turn.set_task(task, status=TaskStatus.PENDING)  # the next verdict sends it
                continue
            problem = budget_problem(goal, turn.now)  # checked before every dispatch
            if problem is not None:
                _end(turn, *problem)
                return
        _send(turn, task, feedback)
        sent = True


def _send(turn: _Turn, task: Task, feedback: str | None) -> None:
    goal = turn.goal
    number = task.attempt + 1
    if task.action:
        siblings = [t for t in turn.state.tasks.values() if t.plan_version == task.plan_version]
        try:
            arguments = resolve_arguments(task.arguments, results_by_step(siblings))
        except KeyError as exc:
            message = f"step {task.step_id} needs {exc.args[0]!r} of a step that did not give it"
            _end(turn, "bad_reference", message)
            return
        key = idempotency_key(goal.goal_id, task.step_id, task.tool, arguments, task.generation)
        fence = action_fence(task.plan_version, number)
        turn.set_goal(steps_used=goal.steps_used + 1)
    else:
        arguments, key, fence = dict(task.arguments), task.key, COMPENSATION_FENCE
    attempt = Attempt(number, key, fence, arguments, feedback=feedback)
    turn.set_task(task, status=TaskStatus.DISPATCHED, attempt=number, key=key, current=attempt)
    turn.put_attempt(AttemptPut(task.task_id, attempt, new=True))
    turn.publish(
        ev.TaskAssigned(
            envelope=turn.envelope(),
            task_id=task.task_id,
            plan_version=task.plan_version,
            step_id=task.step_id,
            tool=task.tool,
            arguments=arguments,
            attempt=number,
            pool=task.pool,
            kind=task.kind,
            timeout_s=turn.registry.get(task.tool).timeout_s,
            idempotency_key=key,
            feedback=feedback,
            fence=fence,
            undoes=task.undoes,
        )
    )


# -- ending --------------------------------------------------------------------------------------


def _complete(turn: _Turn, tasks: Sequence[Task]) -> None:
    summary = f"all {len(tasks)} steps succeeded: " + ", ".join(t.step_id for t in tasks)
    output = results_by_step(tasks)
    goal = turn.set_goal(status=GoalStatus.COMPLETED, summary=summary, output=output)
    turn.publish(
        ev.GoalCompleted(
            envelope=turn.envelope(),
            summary=summary,
            output=output,
            steps=goal.steps_used,
            usage=_usage(goal),
            duration_s=_elapsed(goal, turn.now),
        )
    )


def _end(
    turn: _Turn,
    category: str,
    message: str,
    *,
    status: GoalStatus = GoalStatus.FAILED,
    failed: Task | None = None,
) -> None:
    """End the goal: nothing more is dispatched, every step in flight is superseded (its
    outcome unknown) and told to stop, and every effect is rolled back per the goal's
    policy."""
    if turn.goal.ending is not None:
        return  # already ending
    turn.command(RaiseCancelFlag(turn.goal.goal_id))  # running tools stop, queued ones never run
    ending = Ending(status, category, message, failed.step_id if failed else None)
    _drop_escalations(turn, keep_waiting=False)
    for task in list(turn.state.tasks.values()):
        if task.action and (task.status in _WAITING or task.in_flight):
            _stop(turn, task, TaskStatus.CANCELLED)
    turn.set_goal(ending=ending, status=GoalStatus.COMPENSATING)
    pairs = rollback.to_undo(turn.state, turn.registry)
    if not pairs:
        _finish_failed(turn, status, category, message)
        return
    for task in rollback.compensations(turn.state, pairs, turn.registry):
        turn.put_task(task, new=True)
    _advance(turn)


def _stop(turn: _Turn, task: Task, status: TaskStatus) -> None:
    """A step that will not go on; an attempt still in flight may have taken effect."""
    effects = task.effects
    current = task.current
    if task.status is TaskStatus.DISPATCHED and current is not None:
        effects = with_effect(effects, current)
    turn.set_task(task, status=status, effects=effects)


def _drop_escalations(turn: _Turn, *, keep_waiting: bool) -> None:
    """Close the goal's open questions that are moot: all of them, or (``keep_waiting``) those
    whose task no longer waits for the answer."""
    goal = turn.goal
    left = {}
    for escalation_id, task_id in goal.escalations.items():
        task = turn.state.task(task_id)
        if keep_waiting and task is not None and task.status is TaskStatus.WAITING_HUMAN:
            left[escalation_id] = task_id
        else:
            turn.change(EscalationClosed(escalation_id, "expired", "superseded", {}, AGENT))
    if left != goal.escalations:
        turn.set_goal(escalations=left)


def _finish_failed(turn: _Turn, status: GoalStatus, category: str, message: str) -> None:
    compensated = rollback.undone(turn.state)
    ending = turn.goal.ending or Ending(status, category, message)
    goal = turn.set_goal(
        status=status,
        summary=message,
        ending=evolve(ending, status=status, category=category, message=message),
        escalations={},
    )
    turn.publish(
        ev.GoalFailed(
            envelope=turn.envelope(),
            category=category,
            message=message,
            summary=message,
            steps=goal.steps_used,
            usage=_usage(goal),
            duration_s=_elapsed(goal, turn.now),
            compensated=compensated,
        )
    )


def _usage(goal: Goal) -> ev.Usage:
    return ev.Usage(
        input_tokens=goal.input_tokens, output_tokens=goal.output_tokens, cost_usd=goal.cost_usd
    )


def _elapsed(goal: Goal, now: datetime) -> float:
    return max(0.0, (now - goal.submitted_at).total_seconds())


_HANDLERS: dict[type[Any], Callable[[_Turn, Any], None]] = {
    ev.GoalCancelled: _cancelled,
    ev.TaskCompleted: _outcome,
    ev.TaskFailed: _outcome,
    ev.TaskEvaluated: _verdict,
    ev.EscalationResolved: _resolved,
    PlanReady: _plan_ready,
    PlanRefused: _plan_refused,
    TimerFired: _timer,
    Refused: _refused,
}
