"""Properties of the decider over random event sequences.

Random small plans (chains and fan-outs of the onboarding and builtin tools) are driven by random
inputs: outcomes (succeeded, failed, unknown), verdicts, retry timers, human answers and expiries,
re-plans, cancels, deadline timers, and outcomes or verdicts delivered again or late. After every
decision the invariants hold:

- nothing is dispatched once the goal ended, and no action once it is ending;
- the goal ends once at most;
- steps used never exceed the step budget, and tokens and cost overshoot their budgets by at
  most one step's usage;
- a failed or cancelled goal undoes exactly the (step, key) pairs of undoable steps whose
  attempts succeeded or ended unknown (an attempt still in flight when its step stopped counts
  as unknown), each once, in reverse dependency order, newest plan version first.

The expected rollback is kept by a model of its own, from the attempts the decider dispatched and
the outcomes fed to it, not from the decider's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import events as ev
from agents.engines.base import PlanDraft, PlanStep
from agents.enums import CompensationPolicy, Decision, GoalStatus, TaskKind, TaskStatus, TimerKind
from agents.planner.changes import AskForPlan, Decided, PlanRefused, TimerFired
from agents.planner.keys import COMPENSATION_FENCE, action_fence
from agents.planner.retry import Limits
from agents.planner.state import Task
from tests.unit.test_decide import ARGS, REGISTRY, T0, Out, Sim, result_of

pytestmark = pytest.mark.unit

TOOLS = tuple(ARGS)
NO_EFFECT = ("transient", "permanent")
MAY_HAVE_ACTED = ("timeout", "lease_expired", "partial")
STEP_TOKENS = 30  # the most an outcome, and a verdict, may spend
STEP_COST = 0.05


@st.composite
def plans(draw: st.DrawFn, prefix: str) -> PlanDraft:
    """1 to 4 steps, each depending on up to two earlier ones (chains, fan-outs, joins)."""
    steps: list[PlanStep] = []
    for n in range(draw(st.integers(1, 4))):
        tool = draw(st.sampled_from(TOOLS))
        earlier = [s.id for s in steps]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2)) if earlier else []
        steps.append(PlanStep(id=f"{prefix}s{n}", tool=tool, arguments=ARGS[tool], depends_on=deps))
    return PlanDraft(steps=steps)


goals = st.fixed_dictionaries(
    {
        "max_steps": st.integers(1, 10),
        "max_tokens": st.none() | st.integers(10, 150),
        "budget_usd": st.none() | st.floats(0.05, 0.4),
        "max_replans": st.integers(0, 2),
        "compensation_policy": st.sampled_from(["all", "all", "none"]),
        "deadline_at": st.just(T0 + timedelta(days=1)),
    }
)

limits = st.builds(
    Limits,
    same_failure=st.integers(2, 6),
    no_progress=st.integers(3, 10),
    infra_retries=st.integers(0, 3),
    escalation_default=st.sampled_from(["approve", "retry", "abort"]),
)


@dataclass
class Attempted:
    """One action attempt the decider dispatched, as the model sees it."""

    task_id: str
    version: int
    step_id: str
    tool: str
    key: str
    outcome: str = "in flight"  # succeeded | failed | unknown | in flight
    stopped: bool = False  # its step stopped (goal ending, new plan): later news is moot

    @property
    def may_have_acted(self) -> bool:
        return self.outcome != "failed"


@dataclass
class Model:
    """The goal as the test sees it from outside the decider."""

    attempts: dict[tuple[str, int], Attempted] = field(default_factory=dict)
    deps: dict[tuple[int, str], tuple[str, ...]] = field(default_factory=dict)
    expected: list[tuple[str, str]] | None = None  # (task id, key) to undo, fixed at the end
    ended: int = 0

    def dispatched(self, assigned: ev.TaskAssigned) -> None:
        if assigned.kind == TaskKind.ACTION:
            self.attempts[(assigned.task_id, assigned.attempt)] = Attempted(
                assigned.task_id,
                assigned.plan_version,
                assigned.step_id,
                assigned.tool,
                assigned.idempotency_key,
            )

    def outcome(self, task_id: str, attempt: int, outcome: str) -> None:
        found = self.attempts.get((task_id, attempt))
        if found is not None and found.outcome == "in flight" and not found.stopped:
            found.outcome = outcome

    def stop(self, before_version: int | None = None) -> None:
        """The steps (of versions before ``before_version``, or all) will not go on."""
        for a in self.attempts.values():
            if before_version is None or a.version < before_version:
                a.stopped = True

    def to_undo(self, policy: CompensationPolicy) -> list[tuple[str, str]]:
        if policy is CompensationPolicy.NONE:
            return []
        pairs: list[tuple[str, str]] = []
        for a in self.attempts.values():
            undoable = a.may_have_acted and REGISTRY.get(a.tool).compensation
            if undoable and (a.task_id, a.key) not in pairs:
                pairs.append((a.task_id, a.key))
        return pairs

    def depends(self, version: int, later: str, earlier: str) -> bool:
        """Whether step ``later`` is built (transitively) on ``earlier`` in ``version``."""
        frontier = list(self.deps.get((version, later), ()))
        seen: set[str] = set()
        while frontier:
            s = frontier.pop()
            if s == earlier:
                return True
            if s not in seen:
                seen.add(s)
                frontier += self.deps.get((version, s), ())
        return False


class Driver:
    """Feeds random inputs to a ``Sim`` and checks the invariants after each decision."""

    def __init__(self, data: st.DataObject, fields: dict[str, Any], rules: Limits) -> None:
        self.data = data
        self.sim = Sim(limits=rules, draw=data.draw(st.floats(0, 0.999), label="draw"))
        self.fields = fields
        self.model = Model()
        self.asks: list[AskForPlan] = []
        self.plans = 0
        self.fed: list[ev.Event] = []  # outcomes and verdicts, to deliver again

    # -- feeding and checking ------------------------------------------------------------------

    def feed(self, event: Any) -> Out:
        before = self.sim.state
        was_live = before is None or before.goal.live
        was_ending = before is not None and before.goal.ending is not None
        version = before.goal.plan_version if before is not None else 0
        out = self.sim.feed(event)
        for decided in out.decisions:
            self.check(decided, was_live=was_live, was_ending=was_ending)
        for assigned in out.assigned:  # first: what was sent before the goal began to end
            self.model.dispatched(assigned)
        goal = self.sim.st.goal
        if goal.plan_version > version:
            self.model.stop(before_version=goal.plan_version)
            for t in self.sim.st.tasks.values():
                if t.plan_version == goal.plan_version and t.action:
                    self.model.deps[(t.plan_version, t.step_id)] = t.depends_on
        if goal.ending is not None and not was_ending:
            self.model.stop()
            self.model.expected = self.model.to_undo(goal.compensation_policy)
        self.asks += out.asked
        return out

    def check(self, decided: Decided, *, was_live: bool, was_ending: bool) -> None:
        closed = False
        undoing = was_ending
        for e in decided.events:
            if isinstance(e, ev.TaskAssigned):
                assert was_live and not closed, "dispatched after the goal ended"
                if e.kind == TaskKind.ACTION:
                    assert not undoing, "an action dispatched while the goal is ending"
                    assert e.fence == action_fence(e.plan_version, e.attempt)
                else:
                    undoing = True
                    assert e.fence == COMPENSATION_FENCE
                    assert e.undoes is not None
                    assert e.idempotency_key == f"{e.undoes}:undo"
            if isinstance(e, ev.GoalCompleted | ev.GoalFailed):
                closed = True
                self.model.ended += 1
                assert self.model.ended == 1, "the goal ended twice"
                if isinstance(e, ev.GoalCompleted):
                    assert not undoing
                    assert all(t.status is TaskStatus.SUCCEEDED for t in decided.state.current())
        self.check_budgets(decided)

    def check_budgets(self, decided: Decided) -> None:
        state = decided.state
        goal = state.goal
        assert goal.steps_used <= goal.max_steps
        if goal.max_tokens is None and goal.budget_usd is None:
            return
        # What a step will spend is known after it ran: one step at a time, each dispatched
        # only while the budget is not used up, so the overshoot is one step's at most.
        assert sum(t.in_flight for t in state.current()) <= 1, "two steps at once"
        sent = any(
            e.kind == TaskKind.ACTION for e in decided.events if isinstance(e, ev.TaskAssigned)
        )
        if goal.max_tokens is not None:
            assert goal.tokens < goal.max_tokens + 2 * STEP_TOKENS
            assert not sent or goal.tokens < goal.max_tokens, "dispatched over the token budget"
        if goal.budget_usd is not None:
            assert goal.cost_usd < goal.budget_usd + 2 * STEP_COST + 1e-9
            assert not sent or goal.cost_usd < goal.budget_usd, "dispatched over the cost budget"

    # -- random inputs -------------------------------------------------------------------------

    def usage(self, task: Task) -> ev.Usage:
        if not task.action:
            return ev.Usage()  # a rollback is not held to the budget
        tokens = self.data.draw(st.integers(0, STEP_TOKENS), label="tokens")
        cost = self.data.draw(st.sampled_from([0.0, 0.01, STEP_COST]), label="cost")
        return ev.Usage(input_tokens=tokens, cost_usd=cost)

    def options(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The inputs that make progress, and the rarer ones that disrupt it."""
        state = self.sim.st
        common: list[tuple[str, str]] = [("plan", "")] if self.asks else []
        rare: list[tuple[str, str]] = [("refuse", "")] if self.asks else []
        for t in sorted(state.tasks.values(), key=lambda t: t.task_id):
            if t.status is TaskStatus.DISPATCHED:
                common += [("complete", t.task_id), ("complete", t.task_id), ("fail", t.task_id)]
            elif t.status is TaskStatus.EVALUATING:
                common += [("verdict", t.task_id)] * 2
            elif t.status is TaskStatus.WAITING_RETRY:
                common.append(("timer", t.task_id))
            elif t.current is not None and t.current.outcome is None:  # stopped in flight
                common.append(("late", t.task_id))
        for escalation_id in state.goal.escalations:
            common.append(("answer", escalation_id))
            rare.append(("expire", escalation_id))
        rare += [("cancel", ""), ("deadline", ""), ("foreign", "")]
        if self.fed:
            rare.append(("again", ""))
        return common, rare

    def step(self) -> None:
        common, rare = self.options()
        disrupt = not common or self.data.draw(st.integers(0, 15), label="disrupt") == 0
        kind, arg = self.data.draw(st.sampled_from(rare if disrupt else common), label="input")
        getattr(self, f"_{kind}")(arg)

    def _plan(self, _: str) -> None:
        ask = self.asks.pop(self.data.draw(st.integers(0, len(self.asks) - 1), label="ask"))
        self.plans += 1
        plan = self.data.draw(plans(f"p{self.plans}"), label="plan")
        self.feed(self.sim.ready(plan, ask))

    def _refuse(self, _: str) -> None:
        ask = self.asks.pop(0)
        self.feed(
            PlanRefused(ask.goal_id, "invalid_plan", "no", ev.Usage(), ask.cause_id, ask.replaces)
        )

    def _complete(self, task_id: str, attempt: int | None = None) -> None:
        task = self.sim.st.tasks[task_id]
        current = task.current
        assert current is not None
        number = current.number if attempt is None else attempt
        event = ev.TaskCompleted(
            envelope=self.sim.envelope(),
            task_id=task_id,
            step_id=task.step_id,
            tool=task.tool,
            attempt=number,
            result=result_of(task.tool, current.arguments, current.key),
            worker_id="w",
            started_at=self.sim.now,
            finished_at=self.sim.now,
            usage=self.usage(task),
        )
        self.model.outcome(task_id, number, "succeeded")
        self.fed.append(event)
        self.feed(event)

    def _fail(self, task_id: str, categories: tuple[str, ...] = NO_EFFECT + MAY_HAVE_ACTED) -> None:
        task = self.sim.st.tasks[task_id]
        current = task.current
        assert current is not None
        category = self.data.draw(st.sampled_from(categories), label="category")
        event = ev.TaskFailed(
            envelope=self.sim.envelope(),
            task_id=task_id,
            step_id=task.step_id,
            tool=task.tool,
            attempt=current.number,
            category=category,
            message=self.data.draw(st.sampled_from(["down", "refused"]), label="message"),
            retryable=category != "permanent",
            worker_id="w",
            started_at=self.sim.now,
            finished_at=self.sim.now,
            usage=self.usage(task),
        )
        self.model.outcome(
            task_id, current.number, "failed" if category in NO_EFFECT else "unknown"
        )
        self.fed.append(event)
        self.feed(event)

    def _late(self, task_id: str) -> None:
        """An attempt stopped in flight reports after all: that it acted, or maybe did."""
        if self.data.draw(st.booleans(), label="late acted"):
            self._complete(task_id)
        else:
            self._fail(task_id, MAY_HAVE_ACTED)

    def _verdict(self, task_id: str) -> None:
        task = self.sim.st.tasks[task_id]
        choices = (
            [*Decision, "accept", "accept"] if task.action else ["accept", "retry", "escalate"]
        )
        decision = self.data.draw(st.sampled_from(choices), label="decision")
        event = ev.TaskEvaluated(
            envelope=self.sim.envelope(),
            task_id=task_id,
            step_id=task.step_id,
            attempt=task.attempt,
            decision=decision,
            confidence=0.5,
            reason="judged",
            usage=self.usage(task),
        )
        self.fed.append(event)
        self.feed(event)

    def _timer(self, task_id: str) -> None:
        timer = self.sim.last_timer(task_id)
        self.sim.now = max(self.sim.now, timer.due_at)
        self.feed(TimerFired(self.sim.goal_id, TimerKind.RETRY, task_id, payload=timer.payload))

    def _answer(self, escalation_id: str) -> None:
        action = self.data.draw(st.sampled_from(["approve", "retry", "set", "abort"]), label="ans")
        values = {"value": 99} if action == "set" else {}
        self.feed(
            ev.EscalationResolved(
                envelope=self.sim.envelope(),
                escalation_id=escalation_id,
                action=action,
                values=values,
            )
        )

    def _expire(self, escalation_id: str) -> None:
        self.feed(
            TimerFired(self.sim.goal_id, TimerKind.ESCALATION_EXPIRY, escalation_id=escalation_id)
        )

    def _foreign(self, _: str) -> None:
        self.feed(
            ev.EscalationResolved(
                envelope=self.sim.envelope(), escalation_id="not-this-goal-s", action="abort"
            )
        )

    def _cancel(self, _: str) -> None:
        self.feed(ev.GoalCancelled(envelope=self.sim.envelope()))

    def _deadline(self, _: str) -> None:
        self.feed(TimerFired(self.sim.goal_id, TimerKind.DEADLINE))

    def _again(self, _: str) -> None:
        """An outcome or verdict delivered a second time."""
        out = self.feed(self.data.draw(st.sampled_from(self.fed), label="again"))
        assert out.nothing, "a second delivery changed something"

    # -- the rollback ----------------------------------------------------------------------------

    def check_rollback(self) -> None:
        goal = self.sim.st.goal
        if goal.ending is None:
            assert self.model.expected is None
            return
        expected = self.model.expected
        assert expected is not None
        chain = self.chain()
        got = [(t.compensates, t.undoes) for t in chain]
        assert sorted(got, key=str) == sorted(expected, key=str), "not the effects to undo"
        assert len({key for _, key in got}) == len(got), "an effect undone twice"
        tasks = self.sim.st.tasks
        for i, (first, _) in enumerate(got):
            for second, _ in got[i + 1 :]:
                a, b = tasks[str(first)], tasks[str(second)]
                assert a.plan_version >= b.plan_version, "an older version undone first"
                if a.plan_version == b.plan_version:
                    assert not self.model.depends(b.plan_version, b.step_id, a.step_id), (
                        f"{a.step_id} undone before {b.step_id}, which is built on it"
                    )
        sent = [e for e in self.sim.history.undo if e.attempt == 1]
        assert [e.task_id for e in sent] == [t.task_id for t in chain][: len(sent)]

    def chain(self) -> list[Task]:
        undo = [t for t in self.sim.st.tasks.values() if t.kind is TaskKind.COMPENSATION]
        order = [t for t in undo if not t.depends_on]
        assert len(order) <= 1
        while order and len(order) < len(undo):
            order += [t for t in undo if t.depends_on == (order[-1].step_id,)]
        assert len(order) == len(undo), "the compensations are not one chain"
        return order


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), fields=goals, rules=limits)
def test_random_event_sequences_keep_the_invariants(
    data: st.DataObject, fields: dict[str, Any], rules: Limits
) -> None:
    driver = Driver(data, fields, rules)
    driver.feed(ev.GoalSubmitted(envelope=driver.sim.envelope(), text="random", **fields))
    for _ in range(data.draw(st.integers(5, 60), label="length")):
        driver.step()
    driver.check_rollback()
    goal = driver.sim.st.goal
    done = driver.sim.ended()
    if isinstance(done, ev.GoalCompleted):
        assert goal.status is GoalStatus.COMPLETED
    elif isinstance(done, ev.GoalFailed):
        cancelled = goal.ending is not None and goal.ending.status is GoalStatus.CANCELLED
        assert goal.status is (GoalStatus.CANCELLED if cancelled else GoalStatus.FAILED)
    else:
        assert goal.live
