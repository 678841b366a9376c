"""The goals a chaos run submits: one scenario per failure path of the onboarding example, each
with the end it must reach and what it must leave in the world when it gets there."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class End(StrEnum):
    """How a goal of a scenario must end."""

    COMPLETED = "completed"
    """Every step done; its effects exist exactly once."""
    FAILED = "failed"
    """Ended without success; every effect rolled back."""
    CANCELLED = "cancelled"
    """The harness cancelled it mid-run; every effect rolled back."""


class Effect(StrEnum):
    """A side effect of the onboarding tools that the checks look for."""

    ORGANISATION = "organisation"
    """A row in onboarding_organisations (undone: deleted_at)."""
    BILLING = "billing"
    """A row in onboarding_billing_accounts (undone: cancelled_at)."""
    EMAIL = "email"
    """A row in onboarding_emails (undone: retracted_at)."""
    CHANNEL = "channel"
    """A row in onboarding_channel_messages (undone: retracted_at)."""
    TENANT = "tenant"
    """The tenant folder under the sandbox with its component manifests."""


ONBOARDING_EFFECTS = frozenset(Effect)
TENANT_COMPONENTS = 3  # database, storage, network: what provision_infrastructure writes


@dataclass(frozen=True)
class Customer:
    """The customer one goal onboards; names are unique per run (the run id is in them), so no
    two goals compete for a slug and every tenant folder belongs to one goal."""

    company: str
    slug: str

    @classmethod
    def numbered(cls, run_id: str, index: int) -> Customer:
        return cls(company=f"Chaos {run_id} {index:04d}", slug=f"chaos-{run_id}-{index:04d}")

    def fields(self) -> dict[str, Any]:
        """The customer fields the onboarding playbook and validate_customer_data read."""
        return {
            "company": self.company,
            "email": f"admin@{self.slug}.example",
            "plan": "pro",
            "seats": 12,
            "region": "eu-west",
            "slug": self.slug,
        }


@dataclass(frozen=True)
class GoalRequest:
    """What the harness submits for one goal."""

    text: str
    input: dict[str, Any]
    max_steps: int


StepsBuilder = Callable[[Customer], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    """One way a goal can go, and what must hold when it has gone that way."""

    name: str
    about: str
    expect: End
    simulate: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    steps: StepsBuilder | None = None  # an explicit plan; None: the onboarding playbook
    effects: frozenset[Effect] = ONBOARDING_EFFECTS  # live once each when it completed
    answers: Mapping[str, str] = field(default_factory=dict)  # step id -> escalation answer
    cancel_after: str | None = None  # the harness cancels once this step succeeded
    max_steps: int = 25
    weight: int = 1  # its share of the goals beyond the first of each scenario

    def goal(self, customer: Customer) -> GoalRequest:
        simulate = {tool: dict(switches) for tool, switches in self.simulate.items()}
        if self.steps is None:
            text = f"onboard customer {customer.company}"
            data = customer.fields() | {"simulate": simulate}
        else:
            text = f"set up customer {customer.company} by an explicit plan"
            data = self.steps(customer) | {"playbook": "steps", "simulate": simulate}
        return GoalRequest(text=text, input=data, max_steps=self.max_steps)

    def answer(self, step_id: str | None) -> str | None:
        """The scenario's own answer to an escalation of ``step_id``; None: not expected."""
        return self.answers.get(step_id or "")


# --- explicit plans ----------------------------------------------------------------------------


def _ref(target: str) -> dict[str, str]:
    return {"$ref": target}


def _validate(customer: Customer) -> dict[str, Any]:
    return {"id": "validate", "tool": "validate_customer_data", "arguments": customer.fields()}


_ORGANISATION: dict[str, Any] = {
    "id": "organisation",
    "tool": "create_organisation",
    "arguments": {"name": _ref("validate.company"), "slug": _ref("validate.slug")},
    "depends_on": ["validate"],
}
_BILLING: dict[str, Any] = {
    "id": "billing",
    "tool": "configure_billing",
    "arguments": {
        "org_id": _ref("organisation.org_id"),
        "plan": _ref("validate.plan"),
        "seats": _ref("validate.seats"),
    },
    "depends_on": ["organisation"],
}
_EMAIL: dict[str, Any] = {
    "id": "email",
    "tool": "send_onboarding_email",
    "arguments": {
        "org_id": _ref("organisation.org_id"),
        "to": _ref("validate.email"),
        "company": _ref("validate.company"),
    },
    "depends_on": ["organisation"],
}


def _notify(customer: Customer, after: str) -> dict[str, Any]:
    return {
        "id": "notify",
        "tool": "notify_team_channel",
        "arguments": {"text": f"{customer.company} is set up"},
        "depends_on": [after],
    }


def _billing_only(customer: Customer) -> dict[str, Any]:
    """validate -> organisation -> billing -> notify: no infrastructure, no email."""
    return {"steps": [_validate(customer), _ORGANISATION, _BILLING, _notify(customer, "billing")]}


def _email_or_channel(customer: Customer) -> dict[str, Any]:
    """The email step fails for good and asks for a new plan; the fallback tells the channel
    instead (another tool, so the email's switches do not follow it)."""
    return {
        "steps": [_validate(customer), _ORGANISATION, _EMAIL],
        "fallback_steps": [_validate(customer), _ORGANISATION, _notify(customer, "organisation")],
    }


# --- the catalogue -----------------------------------------------------------------------------

SLOW_DELAY_S = 15.0  # past notify_team_channel's 10 s timeout, so each attempt times out
NEVER = 1000  # more failing attempts than any retry policy or budget allows
CANCEL_WINDOW_S = 6.0  # infrastructure this slow leaves the harness time to cancel mid-run

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("happy", "every step succeeds", End.COMPLETED, weight=6),
    Scenario(
        "billing-flaky",
        "billing fails twice, then works on a retry",
        End.COMPLETED,
        simulate={"configure_billing": {"fail_times": 2}},
        weight=3,
    ),
    Scenario(
        "explicit-plan",
        "a plan written out in the goal: validate, organisation, billing, notify",
        End.COMPLETED,
        steps=_billing_only,
        effects=frozenset({Effect.ORGANISATION, Effect.BILLING, Effect.CHANNEL}),
        weight=2,
    ),
    Scenario(
        "replan",
        "the email fails for good and asks for a new plan, which notifies the channel",
        End.COMPLETED,
        simulate={"send_onboarding_email": {"permanent": True, "replan": True}},
        steps=_email_or_channel,
        effects=frozenset({Effect.ORGANISATION, Effect.CHANNEL}),
        weight=2,
    ),
    Scenario(
        "billing-down-retry",
        "billing is down until a human answers its escalation with retry",
        End.COMPLETED,
        simulate={"configure_billing": {"down": True}},
        answers={"billing": "retry"},
    ),
    Scenario(
        "infra-partial",
        "infrastructure provisions 2 of 3 components and fails",
        End.FAILED,
        simulate={"provision_infrastructure": {"partial_after": 2}},
    ),
    Scenario(
        "billing-permanent",
        "billing, a middle step, fails for good",
        End.FAILED,
        simulate={"configure_billing": {"permanent": True}},
    ),
    Scenario(
        "budget-exceeded",
        "billing's retries use up a budget of 7 steps",
        End.FAILED,
        # Billing never recovers: ``fail_times`` counts attempts, and an attempt lost to a fault
        # is not charged as a step, so a billing that recovered after a few attempts could
        # complete within the budget once faults had taken some of them.
        simulate={"configure_billing": {"fail_times": NEVER}},
        max_steps=7,
    ),
    Scenario(
        "billing-down-abort",
        "billing is down and a human answers its escalation with abort",
        End.FAILED,
        simulate={"configure_billing": {"down": True}},
        answers={"billing": "abort"},
    ),
    Scenario(
        "slow-tool",
        "notifying the channel outlasts its timeout on every attempt; the human aborts",
        End.FAILED,
        simulate={"notify_team_channel": {"delay_s": SLOW_DELAY_S}},
        answers={"notify": "abort"},
    ),
    Scenario(
        "cancel",
        "the harness cancels the goal once its organisation exists",
        End.CANCELLED,
        simulate={"provision_infrastructure": {"delay_s": CANCEL_WINDOW_S}},
        cancel_after="organisation",
    ),
)

BY_NAME: Mapping[str, Scenario] = {s.name: s for s in SCENARIOS}


def longest_delay_s(scenarios: Sequence[Scenario] = SCENARIOS) -> float:
    """The longest a simulated call sleeps: a call abandoned at its timeout may still act this
    long after it started, so the checks wait that long before looking."""
    delays = [
        float(switches.get("delay_s", 0.0)) for s in scenarios for switches in s.simulate.values()
    ]
    return max(delays, default=0.0)


def mix(goals: int, seed: int, scenarios: Sequence[Scenario] = SCENARIOS) -> list[Scenario]:
    """``goals`` scenarios: one of each first (so every one runs once there are enough goals),
    the rest shared out by weight, in an order shuffled by ``seed``."""
    if goals <= len(scenarios):
        picked = list(scenarios[:goals])
    else:
        picked = [*scenarios, *_apportion(goals - len(scenarios), scenarios)]
    random.Random(seed).shuffle(picked)
    return picked


def _apportion(count: int, scenarios: Sequence[Scenario]) -> list[Scenario]:
    """``count`` scenarios in proportion to their weights (largest remainders get the rest)."""
    total = sum(s.weight for s in scenarios)
    exact = [count * s.weight / total for s in scenarios]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(scenarios)), key=lambda i: shares[i] - exact[i])
    for i in by_remainder[: count - sum(shares)]:
        shares[i] += 1
    return [s for s, n in zip(scenarios, shares, strict=True) for _ in range(n)]
