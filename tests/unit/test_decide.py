"""The planner's decider, driven event by event: dispatch, completion and idempotency keys.

This module also holds the test harness the other ``test_decide_*`` modules share: ``Sim`` keeps a
goal's state, feeds it the contract's events (and the planner's own inputs) at a fixed time with
a fixed random draw, answers the decider's ``AskForPlan`` with the next queued plan, and records
every decision so a test asserts on what came out: the changes, the commands, the new state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from agents import events as ev
from agents.engines.base import PlanDraft, PlanStep
from agents.enums import Decision, GoalStatus, TaskKind, TaskStatus, TimerKind
from agents.planner.changes import (
    AskForPlan,
    AttemptPut,
    Change,
    Command,
    Decided,
    GoalPut,
    Input,
    PlanAdded,
    PlanReady,
    Publish,
    RaiseCancelFlag,
    TaskPut,
    TimerFired,
    TimerSet,
)
from agents.planner.decide import Context, Rules, decide
from agents.planner.keys import COMPENSATION_FENCE, action_fence, idempotency_key
from agents.planner.plan import validate_plan
from agents.planner.retry import Limits
from agents.planner.state import GoalState, Task
from agents.tools.base import Registry
from agents.tools.catalogue import default_registry

pytestmark = pytest.mark.unit

E = TypeVar("E", bound=ev.Event)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
GOAL = "goal-1"
REGISTRY = default_registry()

# -- plans ---------------------------------------------------------------------------------------


def ref(path: str) -> dict[str, str]:
    return {"$ref": path}


def step(step_id: str, tool: str = "echo", deps: Sequence[str] = (), **arguments: Any) -> PlanStep:
    return PlanStep(id=step_id, tool=tool, arguments=arguments, depends_on=list(deps))


def draft(*steps: PlanStep, rationale: str = "") -> PlanDraft:
    return PlanDraft(steps=list(steps), rationale=rationale)


def chain(*tools: str) -> PlanDraft:
    """Steps s1 -> s2 -> ... with the given tools (literal arguments, no references)."""
    return draft(
        *(
            step(f"s{n}", tool, [f"s{n - 1}"] if n > 1 else [], **ARGS[tool])
            for n, tool in enumerate(tools, start=1)
        )
    )


CUSTOMER: dict[str, Any] = {
    "company": "Acme Widgets",
    "email": "admin@acme.test",
    "plan": "pro",
    "seats": 12,
    "region": "eu-west",
}

ARGS: dict[str, dict[str, Any]] = {
    "echo": {"value": 1},
    "flaky": {"value": 2},
    "pause": {"seconds": 0.0},
    "validate_customer_data": CUSTOMER,
    "create_organisation": {"name": "Acme", "slug": "acme"},
    "provision_infrastructure": {"org_id": "org_000000000001", "slug": "acme"},
    "configure_billing": {"org_id": "org_000000000001", "plan": "pro", "seats": 3},
    "send_onboarding_email": {"to": "a@acme.test", "company": "Acme", "org_id": "org_1"},
    "notify_team_channel": {"text": "welcome"},
}
"""Literal arguments each tool accepts, for plans built without references."""

UNDOABLE = tuple(t.name for t in REGISTRY if t.compensation)

ONBOARDING = draft(
    step("validate", "validate_customer_data", **CUSTOMER),
    step(
        "organisation",
        "create_organisation",
        ["validate"],
        name=ref("validate.company"),
        slug=ref("validate.slug"),
    ),
    step(
        "infrastructure",
        "provision_infrastructure",
        ["organisation"],
        org_id=ref("organisation.org_id"),
        slug=ref("validate.slug"),
        region=ref("validate.region"),
    ),
    step(
        "billing",
        "configure_billing",
        ["organisation"],
        org_id=ref("organisation.org_id"),
        plan=ref("validate.plan"),
        seats=ref("validate.seats"),
    ),
    step(
        "email",
        "send_onboarding_email",
        ["infrastructure", "billing"],
        to=ref("validate.email"),
        company=ref("validate.company"),
        org_id=ref("organisation.org_id"),
    ),
    rationale="onboard a customer",
)
"""The onboarding example: validate, then the organisation, then its infrastructure and billing
in parallel, then the welcome email."""


def _digest(*parts: Any, length: int = 12) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:length]


def _validated(a: dict[str, Any], key: str) -> dict[str, Any]:
    slug = "-".join(str(a["company"]).lower().split())
    return {**a, "region": a.get("region", "eu-west"), "slug": slug}


def _billing(a: dict[str, Any], key: str) -> dict[str, Any]:
    account = f"acct_{_digest(key, length=16)}"
    return {"account_id": account, "org_id": a["org_id"], "plan": a["plan"], "seats": a["seats"]}


_RESULTS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "validate_customer_data": _validated,
    "create_organisation": lambda a, key: {"org_id": f"org_{_digest(key)}", "slug": a["slug"]},
    "provision_infrastructure": lambda a, key: {
        "tenant_dir": f"/t/{a['slug']}",
        "components": ["database", "storage", "network"],
    },
    "configure_billing": _billing,
    "send_onboarding_email": lambda a, key: {"message_id": f"msg_{_digest(key)}", "to": a["to"]},
    "notify_team_channel": lambda a, key: {
        "message_id": f"chm_{_digest(key)}",
        "channel": a.get("channel", "#onboarding"),
    },
    "pause": lambda a, key: {
        "seconds": a["seconds"],
        "label": "",
        "started_at": 0.0,
        "finished_at": 0.0,
    },
    "echo": lambda a, key: {"value": a.get("value")},
    "flaky": lambda a, key: {"value": a.get("value")},
}


def result_of(tool: str, arguments: Mapping[str, Any], key: str = "") -> dict[str, Any]:
    """A plausible result of ``tool`` called with ``arguments`` (ids derived from the key); a
    compensation's is a plain acknowledgement."""
    make = _RESULTS.get(tool)
    return make(dict(arguments), key) if make is not None else {"undone": True}


# -- the harness ---------------------------------------------------------------------------------


@dataclass
class Out:
    """What one fed input (and the plans that answered it) decided."""

    decisions: list[Decided] = field(default_factory=list)

    @property
    def changes(self) -> list[Change]:
        return [c for d in self.decisions for c in d.changes]

    @property
    def commands(self) -> list[Command]:
        return [c for d in self.decisions for c in d.commands]

    @property
    def events(self) -> list[ev.Event]:
        return [e for d in self.decisions for e in d.events]

    def published(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def assigned(self) -> list[ev.TaskAssigned]:
        return self.published(ev.TaskAssigned)

    @property
    def actions(self) -> list[ev.TaskAssigned]:
        return [a for a in self.assigned if a.kind == TaskKind.ACTION]

    @property
    def undo(self) -> list[ev.TaskAssigned]:
        return [a for a in self.assigned if a.kind == TaskKind.COMPENSATION]

    def timers(self, kind: TimerKind | None = None) -> list[TimerSet]:
        found = [c for c in self.changes if isinstance(c, TimerSet)]
        return [t for t in found if kind is None or t.kind is kind]

    @property
    def asked(self) -> list[AskForPlan]:
        return [c for c in self.commands if isinstance(c, AskForPlan)]

    @property
    def nothing(self) -> bool:
        return not self.changes and not self.commands


class Sim:
    """A goal driven through the decider, one input at a time."""

    def __init__(
        self,
        *plans: PlanDraft,
        limits: Limits | None = None,
        registry: Registry = REGISTRY,
        goal_id: str = GOAL,
        draw: float = 0.5,
        plan_usage: ev.Usage | None = None,
    ) -> None:
        self.plans = list(plans)
        self.rules = Rules(registry, limits or Limits())
        self.goal_id = goal_id
        self.now = T0
        self.draw = draw
        self.plan_usage = plan_usage or ev.Usage()
        self.state: GoalState | None = None
        self.history = Out()

    # -- feeding -------------------------------------------------------------------------------

    def context(self) -> Context:
        return Context(self.rules, self.now, self.draw)

    def feed(self, event: Input) -> Out:
        """Decide ``event``; answer each ``AskForPlan`` with the next queued plan, if any."""
        out = Out()
        pending: list[Input] = [event]
        while pending:
            decided = decide(self.state, pending.pop(0), self.context())
            self.state = decided.state
            out.decisions.append(decided)
            self.history.decisions.append(decided)
            for command in decided.commands:
                if isinstance(command, AskForPlan) and self.plans:
                    pending.append(self.ready(self.plans.pop(0), command))
        return out

    def ready(self, plan: PlanDraft, ask: AskForPlan) -> PlanReady:
        reason = "re-plan" if ask.context else ""
        return PlanReady(
            ask.goal_id, plan, "scripted", self.plan_usage, ask.cause_id, reason, ask.replaces
        )

    def envelope(self) -> ev.Envelope:
        return ev.Envelope(goal_id=self.goal_id, occurred_at=self.now)

    # -- reading -------------------------------------------------------------------------------

    @property
    def st(self) -> GoalState:
        assert self.state is not None
        return self.state

    def status(self) -> GoalStatus:
        return self.st.goal.status

    def task(self, step_id: str, version: int | None = None) -> Task:
        """The task of ``step_id``: an action of the current plan version (or of ``version``), or
        the compensation of that step id."""
        state = self.st
        v = state.goal.plan_version if version is None else version
        found = state.tasks.get(f"{self.goal_id}.{v}.{step_id}")
        if found is not None and (found.action or version is not None):
            return found
        undo = [t for t in state.tasks.values() if not t.action and t.step_id == step_id]
        found = undo[0] if undo else found
        assert found is not None, f"no task {step_id!r}"
        return found

    def result(self, step_id: str, version: int | None = None) -> Mapping[str, Any]:
        """The result a succeeded step keeps."""
        result = self.task(step_id, version).result
        assert result is not None, f"{step_id} has no result"
        return result

    def status_of(self, step_id: str, version: int | None = None) -> TaskStatus:
        return self.task(step_id, version).status

    def in_flight(self) -> list[Task]:
        return [t for t in self.st.tasks.values() if t.status is TaskStatus.DISPATCHED]

    def compensations(self) -> list[Task]:
        return [t for t in self.st.tasks.values() if t.kind is TaskKind.COMPENSATION]

    def last_timer(self, task_id: str | None = None, kind: TimerKind = TimerKind.RETRY) -> TimerSet:
        timers = [t for t in self.history.timers(kind) if task_id is None or t.task_id == task_id]
        assert timers, f"no {kind} timer for {task_id}"
        return timers[-1]

    def escalations(self) -> list[ev.EscalationRaised]:
        return self.history.published(ev.EscalationRaised)

    def ended(self) -> ev.GoalCompleted | ev.GoalFailed | None:
        done = [e for e in self.history.events if isinstance(e, ev.GoalCompleted | ev.GoalFailed)]
        assert len(done) <= 1, "the goal ended twice"
        return done[0] if done else None

    def failed(self) -> ev.GoalFailed:
        done = self.ended()
        assert isinstance(done, ev.GoalFailed), done
        return done

    # -- inputs --------------------------------------------------------------------------------

    def submit(self, **fields: Any) -> Out:
        fields.setdefault("text", "onboard Acme")
        return self.feed(ev.GoalSubmitted(envelope=self.envelope(), **fields))

    def start(self, **fields: Any) -> Out:
        """Submit the goal; its first plan answers (it must be queued)."""
        assert self.plans, "queue the goal's plan first"
        out = self.submit(**fields)
        assert self.st.goal.plan_version == 1, self.st.goal
        return out

    def plan(self, plan: PlanDraft, cause_id: str = "ask", replaces: int | None = None) -> Out:
        """Answer an ask for a plan (by default, one to replace the current plan version)."""
        version = self.st.goal.plan_version if replaces is None else replaces
        return self.feed(
            PlanReady(self.goal_id, plan, "scripted", self.plan_usage, cause_id, "", version)
        )

    def _attempt(self, task: Task, attempt: int | None) -> int:
        return task.attempt if attempt is None else attempt

    def complete(
        self,
        step_id: str,
        result: Mapping[str, Any] | None = None,
        *,
        attempt: int | None = None,
        usage: ev.Usage | None = None,
        version: int | None = None,
    ) -> Out:
        task = self.task(step_id, version)
        current = task.current
        if result is None:
            arguments = current.arguments if current is not None else task.arguments
            result = result_of(task.tool, arguments, task.key)
        return self.feed(
            ev.TaskCompleted(
                envelope=self.envelope(),
                task_id=task.task_id,
                step_id=task.step_id,
                tool=task.tool,
                attempt=self._attempt(task, attempt),
                result=dict(result),
                worker_id="w1",
                started_at=self.now,
                finished_at=self.now,
                usage=usage or ev.Usage(),
            )
        )

    def fail(
        self,
        step_id: str,
        category: str = "transient",
        message: str = "try later",
        *,
        attempt: int | None = None,
        details: Mapping[str, Any] | None = None,
        usage: ev.Usage | None = None,
        version: int | None = None,
    ) -> Out:
        task = self.task(step_id, version)
        return self.feed(
            ev.TaskFailed(
                envelope=self.envelope(),
                task_id=task.task_id,
                step_id=task.step_id,
                tool=task.tool,
                attempt=self._attempt(task, attempt),
                category=category,
                message=message,
                retryable=category in ("transient", "timeout", "lease_expired"),
                worker_id="w1",
                started_at=self.now,
                finished_at=self.now,
                details=dict(details or {}),
                usage=usage or ev.Usage(),
            )
        )

    def judge(
        self,
        step_id: str,
        decision: Decision | str,
        reason: str = "because",
        *,
        attempt: int | None = None,
        feedback: str | None = None,
        usage: ev.Usage | None = None,
        confidence: float = 0.9,
        version: int | None = None,
    ) -> Out:
        task = self.task(step_id, version)
        return self.feed(
            ev.TaskEvaluated(
                envelope=self.envelope(),
                task_id=task.task_id,
                step_id=task.step_id,
                attempt=self._attempt(task, attempt),
                decision=str(decision),
                confidence=confidence,
                reason=reason,
                feedback=feedback,
                usage=usage or ev.Usage(),
            )
        )

    def ok(self, *step_ids: str, usage: ev.Usage | None = None) -> Out:
        """Each step completes (with its plausible result) and is accepted."""
        out = Out()
        for step_id in step_ids:
            out.decisions += self.complete(step_id, usage=usage).decisions
            out.decisions += self.judge(step_id, Decision.ACCEPT).decisions
        return out

    def lost(self, step_id: str, category: str = "transient", message: str = "try later") -> Out:
        """The step's attempt fails with ``category`` and the evaluator asks for a retry."""
        out = self.fail(step_id, category, message)
        out.decisions += self.judge(step_id, Decision.RETRY, message).decisions
        return out

    def fire_retry(self, step_id: str) -> Out:
        """The step's latest retry timer comes due (the clock moves to its due time)."""
        task = self.task(step_id)
        timer = self.last_timer(task.task_id)
        self.now = max(self.now, timer.due_at)
        return self.feed(
            TimerFired(self.goal_id, TimerKind.RETRY, timer.task_id, payload=timer.payload)
        )

    def retry(self, step_id: str, category: str = "transient", message: str = "try later") -> Out:
        """A failed attempt, a retry verdict, and the retry's timer firing."""
        out = self.lost(step_id, category, message)
        out.decisions += self.fire_retry(step_id).decisions
        return out

    def fire_deadline(self) -> Out:
        return self.feed(TimerFired(self.goal_id, TimerKind.DEADLINE))

    def expire(self, escalation_id: str | None = None) -> Out:
        escalation_id = escalation_id or self.escalations()[-1].escalation_id
        return self.feed(
            TimerFired(self.goal_id, TimerKind.ESCALATION_EXPIRY, escalation_id=escalation_id)
        )

    def resolve(
        self,
        action: str,
        values: Mapping[str, Any] | None = None,
        *,
        escalation_id: str | None = None,
    ) -> Out:
        escalation_id = escalation_id or self.escalations()[-1].escalation_id
        return self.feed(
            ev.EscalationResolved(
                envelope=self.envelope(),
                escalation_id=escalation_id,
                action=action,
                values=dict(values or {}),
                resolved_by="ops",
            )
        )

    def cancel(self, reason: str = "changed my mind") -> Out:
        return self.feed(ev.GoalCancelled(envelope=self.envelope(), reason=reason))

    def undo_all(self) -> Out:
        """Every compensation dispatched (one at a time, as the chain runs) succeeds."""
        out = Out()
        while True:
            waiting = [t for t in self.compensations() if t.status is TaskStatus.DISPATCHED]
            if not waiting:
                return out
            out.decisions += self.ok(waiting[0].step_id).decisions


def keys_of(assigned: Iterable[ev.TaskAssigned]) -> list[str]:
    return [a.idempotency_key for a in assigned]


def steps_of(assigned: Iterable[ev.TaskAssigned]) -> list[str]:
    return [a.step_id for a in assigned]


# -- tests: the harness's plans are valid ---------------------------------------------------------


@pytest.mark.parametrize(
    "plan",
    [ONBOARDING, chain("echo", "flaky", "pause"), chain(*UNDOABLE)],
    ids=["onboarding", "builtin", "undoable"],
)
def test_the_plans_used_here_are_valid(plan: PlanDraft) -> None:
    assert validate_plan(plan, REGISTRY, 25)


# -- submission ----------------------------------------------------------------------------------


def test_a_submitted_goal_is_stored_and_a_plan_asked_for() -> None:
    sim = Sim()
    event = ev.GoalSubmitted(
        envelope=sim.envelope(),
        text="onboard Acme",
        max_steps=7,
        deadline_at=T0 + timedelta(hours=1),
    )
    out = sim.feed(event)
    put = out.changes[0]
    assert isinstance(put, GoalPut)
    assert put.new
    assert put.text == "onboard Acme"
    assert sim.status() is GoalStatus.PLANNING
    assert sim.st.goal.max_steps == 7
    assert out.timers(TimerKind.DEADLINE)[0].due_at == T0 + timedelta(hours=1)
    assert out.commands == [AskForPlan(GOAL, event.event_id)]


def test_a_goal_submitted_again_changes_nothing() -> None:
    sim = Sim(chain("echo"))
    sim.start()
    before = sim.st
    out = sim.submit()
    assert out.nothing
    assert sim.st is before


@pytest.mark.parametrize(
    ("fields", "category"),
    [
        ({"deadline_at": T0}, "deadline"),
        ({"max_tokens": 0}, "budget_tokens"),
        ({"budget_usd": 0.0}, "budget_cost"),
    ],
)
def test_a_goal_that_cannot_start_fails_at_once(fields: dict[str, Any], category: str) -> None:
    sim = Sim(chain("echo"))
    out = sim.submit(**fields)
    assert not out.asked
    assert sim.failed().category == category
    assert sim.status() is GoalStatus.FAILED


@pytest.mark.parametrize(
    "event",
    [
        ev.GoalCancelled(envelope=ev.Envelope(goal_id="nobody")),
        TimerFired("nobody", TimerKind.DEADLINE),
    ],
)
def test_inputs_about_an_unknown_goal_decide_nothing(event: Input) -> None:
    decided = decide(None, event, Context(Rules(REGISTRY), T0))
    assert decided == Decided(None)


# -- dispatch and completion ---------------------------------------------------------------------


def test_ready_steps_are_dispatched_in_parallel() -> None:
    sim = Sim(
        draft(
            step("a", value=1),
            step("b", value=2),
            step("c", deps=["a", "b"], value=ref("a.value")),
        )
    )
    out = sim.start()
    assert steps_of(out.assigned) == ["a", "b"]
    assert sim.status() is GoalStatus.RUNNING
    assert sim.st.goal.steps_used == 2
    assert [sim.status_of(s) for s in "abc"] == [
        TaskStatus.DISPATCHED,
        TaskStatus.DISPATCHED,
        TaskStatus.PENDING,
    ]
    added = [c for c in out.changes if isinstance(c, PlanAdded)]
    assert [(p.version, len(p.steps)) for p in added] == [(1, 3)]
    assert {c.task.task_id for c in out.changes if isinstance(c, TaskPut) and c.new} == {
        f"{GOAL}.1.a",
        f"{GOAL}.1.b",
        f"{GOAL}.1.c",
    }
    assert [c.attempt.number for c in out.changes if isinstance(c, AttemptPut) and c.new] == [1, 1]


def test_the_assignment_carries_the_attempt_key_fence_and_pool() -> None:
    sim = Sim(chain("provision_infrastructure"))
    out = sim.start()
    (assigned,) = out.assigned
    task = sim.task("s1")
    arguments = ARGS["provision_infrastructure"]
    assert assigned.attempt == 1
    assert assigned.kind == TaskKind.ACTION
    assert assigned.pool == "infra"
    assert assigned.timeout_s == 60.0
    assert assigned.fence == action_fence(1, 1)
    assert assigned.undoes is None
    assert assigned.arguments == arguments
    key = idempotency_key(GOAL, "s1", "provision_infrastructure", arguments, 0)
    assert assigned.idempotency_key == key == task.key
    assert assigned.envelope.goal_id == GOAL
    assert assigned.envelope.occurred_at == T0
    assert assigned.envelope.producer_agent == "planner"


def test_an_accepted_step_succeeds_with_its_output_and_its_dependents_go() -> None:
    sim = Sim(draft(step("a", value=5), step("b", deps=["a"], value=ref("a.value"))))
    sim.start()
    completed = sim.complete("a", {"value": 5})
    assert sim.status_of("a") is TaskStatus.EVALUATING
    assert not completed.assigned
    accepted = sim.judge("a", Decision.ACCEPT)
    assert sim.task("a").result == {"value": 5}
    assert sim.status_of("a") is TaskStatus.SUCCEEDED
    (b,) = accepted.assigned
    assert (b.step_id, b.arguments) == ("b", {"value": 5})  # the reference resolved


def test_the_goal_completes_when_every_step_succeeded() -> None:
    sim = Sim(draft(step("a", value="x"), step("b", deps=["a"], value=ref("a.value"))))
    sim.start()
    sim.ok("a")
    sim.now = T0 + timedelta(seconds=42)
    out = sim.ok("b")
    (done,) = out.published(ev.GoalCompleted)
    assert done.output == {"a": {"value": "x"}, "b": {"value": "x"}}
    assert done.steps == 2
    assert done.duration_s == 42.0
    assert sim.status() is GoalStatus.COMPLETED
    assert sim.st.goal.output == done.output
    assert not out.actions


def test_the_onboarding_plan_runs_to_completion_with_references_resolved() -> None:
    sim = Sim(ONBOARDING)
    assert steps_of(sim.start().assigned) == ["validate"]
    assert steps_of(sim.ok("validate").assigned) == ["organisation"]
    parallel = sim.ok("organisation")
    assert sorted(steps_of(parallel.assigned)) == ["billing", "infrastructure"]
    org_id = sim.result("organisation")["org_id"]
    assert all(a.arguments["org_id"] == org_id for a in parallel.assigned)
    billing = next(a for a in parallel.assigned if a.step_id == "billing")
    assert billing.arguments == {"org_id": org_id, "plan": "pro", "seats": 12}
    assert billing.pool == "billing"
    assert not sim.ok("infrastructure").assigned  # the email waits for billing too
    assert steps_of(sim.ok("billing").assigned) == ["email"]
    sim.ok("email")
    assert sim.status() is GoalStatus.COMPLETED
    assert sim.st.goal.steps_used == 5


def test_usage_is_charged_to_the_goal() -> None:
    sim = Sim(chain("echo"), plan_usage=ev.Usage(input_tokens=100, cost_usd=0.01))
    sim.start()
    sim.complete("s1", usage=ev.Usage(input_tokens=1, output_tokens=2, cost_usd=0.001))
    sim.judge("s1", Decision.ACCEPT, usage=ev.Usage(output_tokens=10, cost_usd=0.002))
    goal = sim.st.goal
    assert (goal.input_tokens, goal.output_tokens) == (101, 12)
    assert goal.cost_usd == pytest.approx(0.013)
    done = sim.ended()
    assert isinstance(done, ev.GoalCompleted)
    assert done.usage.input_tokens == 101


def test_the_decider_does_not_change_the_state_it_was_given() -> None:
    sim = Sim(chain("echo", "echo"))
    sim.start()
    before = sim.st
    snapshot = replace(before.goal), dict(before.tasks)
    sim.ok("s1")
    assert (before.goal, dict(before.tasks)) == snapshot
    assert sim.st is not before


def test_the_same_input_in_the_same_state_decides_the_same() -> None:
    sim = Sim(chain("echo", "echo"))
    sim.start()
    sim.complete("s1")
    state = sim.st
    verdict = ev.TaskEvaluated(
        envelope=sim.envelope(),
        task_id=f"{GOAL}.1.s1",
        step_id="s1",
        attempt=1,
        decision="accept",
        confidence=1.0,
        reason="fine",
    )
    first = decide(state, verdict, sim.context())
    second = decide(state, verdict, sim.context())
    assert first.changes == second.changes
    assert [type(c) for c in first.commands] == [type(c) for c in second.commands]
    assert [a.idempotency_key for a in Out([first]).assigned] == [
        a.idempotency_key for a in Out([second]).assigned
    ]


# -- idempotency keys ----------------------------------------------------------------------------


def test_the_same_step_with_the_same_resolved_arguments_has_the_same_key() -> None:
    one = Sim(draft(step("a", value=3), step("b", deps=["a"], value=ref("a.value"))))
    two = Sim(draft(step("a", value=4), step("b", deps=["a"], value=ref("a.value"))))
    keys = []
    for sim in (one, two):
        sim.start()
        sim.complete("a", {"value": 9})  # both results say 9: b's call is the same
        keys.append(keys_of(sim.judge("a", Decision.ACCEPT).assigned))
    assert keys[0] == keys[1]
    assert keys[0][0].startswith(f"{GOAL}:b:")


@pytest.mark.parametrize(
    ("other", "same"),
    [
        ({"goal_id": GOAL, "step": "a", "value": 1}, True),
        ({"goal_id": "goal-2", "step": "a", "value": 1}, False),
        ({"goal_id": GOAL, "step": "b", "value": 1}, False),
        ({"goal_id": GOAL, "step": "a", "value": 2}, False),
    ],
)
def test_keys_name_the_goal_the_step_and_the_call(other: dict[str, Any], same: bool) -> None:
    def key(goal_id: str, step_id: str, value: int) -> str:
        sim = Sim(draft(step(step_id, value=value)), goal_id=goal_id)
        return keys_of(sim.start().assigned)[0]

    assert (key(GOAL, "a", 1) == key(other["goal_id"], other["step"], other["value"])) is same


@pytest.mark.parametrize(
    ("category", "decision", "same_key"),
    [
        ("transient", Decision.RETRY, True),  # the tool did nothing: the same call again
        ("timeout", Decision.RETRY, True),  # unknown: converge on the first effect
        ("lease_expired", Decision.RETRY, True),
        ("partial", Decision.RETRY, True),
        (None, Decision.RETRY, False),  # a semantic retry: a different call
    ],
)
def test_a_retry_keeps_its_key_unless_the_call_changes(
    category: str | None, decision: Decision, same_key: bool
) -> None:
    sim = Sim(chain("flaky"))
    first = keys_of(sim.start().assigned)
    if category is None:
        sim.complete("s1")
    else:
        sim.fail("s1", category)
    sim.judge("s1", decision, feedback="use another value")
    again = sim.fire_retry("s1")
    (assigned,) = again.assigned
    assert assigned.attempt == 2
    assert (assigned.idempotency_key == first[0]) is same_key
    if category is None:
        assert assigned.feedback == "use another value"
        # the first call's effect stays recorded
        assert [e.key for e in sim.task("s1").effects] == [first[0]]


def test_a_human_set_makes_a_new_key_and_a_human_retry_keeps_it() -> None:
    sim = Sim(chain("create_organisation"))
    (first,) = keys_of(sim.start().assigned)
    sim.fail("s1", "permanent", "slug taken")
    sim.judge("s1", Decision.ESCALATE, "slug taken")
    (retried,) = sim.resolve("retry").assigned
    assert retried.idempotency_key == first
    assert retried.arguments == ARGS["create_organisation"]
    sim.fail("s1", "permanent", "slug taken")
    sim.judge("s1", Decision.ESCALATE, "slug taken again")
    (changed,) = sim.resolve("set", {"slug": "acme-2"}).assigned
    assert changed.idempotency_key != first
    assert changed.arguments == {"name": "Acme", "slug": "acme-2"}
    assert changed.feedback is not None
    assert changed.feedback.startswith("retry requested by a human")


def test_a_compensation_is_keyed_after_the_effect_it_undoes() -> None:
    sim = Sim(chain("create_organisation", "echo"))
    (created,) = sim.start().assigned
    sim.ok("s1")
    sim.fail("s2", "permanent")
    (undo,) = sim.judge("s2", Decision.FAIL).undo
    assert undo.undoes == created.idempotency_key
    assert undo.idempotency_key == f"{created.idempotency_key}:undo"
    assert undo.fence == COMPENSATION_FENCE
    assert undo.tool == "delete_organisation"
    org_id = sim.result("s1")["org_id"]
    assert undo.arguments == {"org_id": org_id}


# -- commands ------------------------------------------------------------------------------------


def test_every_published_event_belongs_to_the_goal_and_names_its_cause() -> None:
    sim = Sim(chain("echo", "echo"))
    sim.start()
    sim.complete("s1")
    verdict = sim.judge("s1", Decision.ACCEPT)
    (assigned,) = verdict.assigned
    cause = verdict.decisions[0]
    assert assigned.envelope.correlation_id == GOAL
    assert assigned.envelope.causation_id is not None
    assert all(isinstance(c, Publish | RaiseCancelFlag | AskForPlan) for c in cause.commands)
    for event in sim.history.events:
        assert event.goal_id == GOAL
