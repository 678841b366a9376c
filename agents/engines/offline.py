"""The offline engine: plans from playbooks and judges by fixed rules, with no model and no network.

It is the engine the mesh uses when no API key is configured, so the demo and the tests run
offline. A playbook recognises a goal, by name (``{"playbook": "<name>"}`` in the goal input) or
by keywords in the goal text, and builds the plan from the goal input. Shipped playbooks:

- ``onboarding`` (goal text mentioning "onboard"): the customer-onboarding example, built from the
  customer fields of the goal input (``company``, ``email``, ``plan``, ``seats``, optional
  ``region``, ``slug``, ``channel``), at the top level or under ``customer``.
- ``steps``: the plan is spelt out in the goal input as ``{"playbook": "steps", "steps": [...]}``,
  each step ``{"id", "tool", "arguments", "depends_on"}``; tests use it to drive any DAG.

A goal no playbook knows is refused with the ``no_playbook`` category; it never guesses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agents.engines.base import (
    EngineError,
    Judged,
    Judgement,
    JudgeRequest,
    PlanDraft,
    PlanInvalid,
    Planned,
    PlanRequest,
    PlanStep,
)
from agents.events import Usage


@dataclass(frozen=True)
class Playbook:
    """A goal the engine knows: how to recognise it, and how to plan it from the goal input."""

    name: str
    build: Callable[[Mapping[str, Any]], PlanDraft]
    keywords: tuple[str, ...] = ()

    def matches(self, request: PlanRequest) -> bool:
        named = request.input.get("playbook")
        if named is not None:
            return bool(named == self.name)
        text = request.text.lower()
        # A keyword matches at the start of a word, so "onboard" also finds "onboarding".
        return any(re.search(rf"\b{re.escape(k)}", text) for k in self.keywords)


def _ref(target: str) -> dict[str, str]:
    return {"$ref": target}


# --- onboarding --------------------------------------------------------------------------------

_CUSTOMER_FIELDS = ("company", "email", "plan", "seats", "region", "slug")

_ONBOARDING_RATIONALE = (
    "Validate the data before anything is created; the organisation comes next because every "
    "later step needs its id; infrastructure and billing do not depend on each other, so they "
    "run in parallel; the welcome email waits for both, and the team hears last."
)


def _customer(data: Mapping[str, Any]) -> Mapping[str, Any]:
    nested = data.get("customer")
    return nested if isinstance(nested, Mapping) else data


def _announcement(customer: Mapping[str, Any]) -> str:
    company = customer.get("company", "a new customer")
    plan = customer.get("plan", "?")
    seats = customer.get("seats", "?")
    return f"New customer onboarded: {company} on the {plan} plan with {seats} seats."


def _notify_arguments(customer: Mapping[str, Any]) -> dict[str, Any]:
    arguments: dict[str, Any] = {"text": _announcement(customer)}
    if "channel" in customer:
        arguments["channel"] = customer["channel"]
    return arguments


def onboarding_plan(data: Mapping[str, Any]) -> PlanDraft:
    """validate -> organisation -> (infrastructure || billing) -> email -> notify."""
    customer = _customer(data)
    steps = [
        PlanStep(
            id="validate",
            tool="validate_customer_data",
            arguments={k: customer[k] for k in _CUSTOMER_FIELDS if k in customer},
        ),
        PlanStep(
            id="organisation",
            tool="create_organisation",
            arguments={"name": _ref("validate.company"), "slug": _ref("validate.slug")},
            depends_on=["validate"],
        ),
        PlanStep(
            id="infrastructure",
            tool="provision_infrastructure",
            arguments={
                "org_id": _ref("organisation.org_id"),
                "slug": _ref("organisation.slug"),
                "region": _ref("validate.region"),
            },
            depends_on=["organisation"],
        ),
        PlanStep(
            id="billing",
            tool="configure_billing",
            arguments={
                "org_id": _ref("organisation.org_id"),
                "plan": _ref("validate.plan"),
                "seats": _ref("validate.seats"),
            },
            depends_on=["organisation"],
        ),
        PlanStep(
            id="email",
            tool="send_onboarding_email",
            arguments={
                "org_id": _ref("organisation.org_id"),
                "to": _ref("validate.email"),
                "company": _ref("validate.company"),
            },
            depends_on=["infrastructure", "billing"],
        ),
        PlanStep(
            id="notify",
            tool="notify_team_channel",
            arguments=_notify_arguments(customer),
            depends_on=["email"],
        ),
    ]
    return PlanDraft(steps=steps, rationale=_ONBOARDING_RATIONALE)


# --- explicit steps ----------------------------------------------------------------------------


def explicit_plan(data: Mapping[str, Any], *, replanning: bool = False) -> PlanDraft:
    """The plan written out in the goal input's ``steps`` (``fallback_steps`` when re-planning,
    if the input has them: the way a goal states its alternative route)."""
    key = "fallback_steps" if replanning and "fallback_steps" in data else "steps"
    try:
        return PlanDraft.model_validate(
            {"steps": data.get(key), "rationale": f"the {key} given in the goal input"}
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise EngineError(
            "invalid_plan", f"the goal input's steps are not a plan: {where}: {first['msg']}"
        ) from exc


ONBOARDING = Playbook(name="onboarding", build=onboarding_plan, keywords=("onboard",))
STEPS = Playbook(name="steps", build=explicit_plan)
PLAYBOOKS: tuple[Playbook, ...] = (ONBOARDING, STEPS)


def with_steps(playbooks: Sequence[Playbook]) -> tuple[Playbook, ...]:
    """An app's playbooks and ``steps``, which every mesh offers (unless the app has its own)."""
    if any(p.name == STEPS.name for p in playbooks):
        return tuple(playbooks)
    return (*playbooks, STEPS)


# --- the engine --------------------------------------------------------------------------------


class OfflineEngine:
    """Deterministic planning from playbooks and rule-based judgement; costs nothing."""

    name = "offline"

    def __init__(self, playbooks: Sequence[Playbook] = PLAYBOOKS) -> None:
        self._playbooks = tuple(playbooks)

    def plan(self, request: PlanRequest) -> Planned:
        playbook = self._choose(request)
        if playbook.build is explicit_plan:
            draft = explicit_plan(request.input, replanning=bool(request.context))
        else:
            draft = playbook.build(request.input)
        try:
            request.validate(draft)
        except PlanInvalid as exc:
            raise EngineError(
                exc.category, f"the {playbook.name} playbook's plan is invalid: {exc}"
            ) from exc
        return Planned(draft=draft, usage=Usage(), engine=self.name)

    def judge(self, request: JudgeRequest) -> Judged:
        return Judged(judgement=judgement_for(request), usage=Usage())

    def _choose(self, request: PlanRequest) -> Playbook:
        for playbook in self._playbooks:
            if playbook.matches(request):
                return playbook
        names = ", ".join(p.name for p in self._playbooks)
        raise EngineError(
            "no_playbook",
            f"the offline engine has no playbook for this goal: {request.text!r}; set "
            f"OPENAI_API_KEY to use a model, or name one of its playbooks ({names}) in the goal "
            'input as {"playbook": "<name>"}',
        )


def judgement_for(request: JudgeRequest) -> Judgement:
    """Accept clean results, retry flawed ones, and follow the failure's own retryability.

    Two ``simulate`` switches of the goal input act on the judgement of a tool's outcome:
    ``confidence: X`` (the confidence of an accept) and ``replan: true`` (a failure that
    retrying will not fix asks for a new plan instead of failing the goal).
    """
    switches = _switches(request)
    if request.outcome == "completed":
        judged = _judge_completed(request.problems)
        if judged.decision == "accept" and "confidence" in switches:
            return judged.model_copy(update={"confidence": float(switches["confidence"])})
        return judged
    category = request.result.get("category", "unknown")
    message = request.result.get("message", "")
    if request.result.get("retryable") is not True and switches.get("replan") is True:
        return Judgement(
            decision="replan",
            confidence=1.0,
            reason=f"{category}: {message}; another way is needed",
        )
    if request.result.get("retryable") is True:
        return Judgement(
            decision="retry", confidence=1.0, reason=f"a retryable failure ({category}): {message}"
        )
    return Judgement(
        decision="fail",
        confidence=1.0,
        reason=f"a failure that retrying will not fix ({category}): {message}",
    )


def _judge_completed(problems: Sequence[str]) -> Judgement:
    if not problems:
        return Judgement(
            decision="accept", confidence=1.0, reason="the step completed and passed every check"
        )
    listed = "; ".join(problems)
    # Low confidence: the rules only know the result is wrong, not how to get a right one.
    return Judgement(
        decision="retry",
        confidence=0.2,
        reason=f"the result failed its checks: {listed}",
        feedback=f"the previous result had these problems: {listed}",
    )


def _switches(request: JudgeRequest) -> Mapping[str, Any]:
    simulate = request.goal_input.get("simulate", {})
    tool = str(request.tool.get("name", ""))
    found = simulate.get(tool, {}) if isinstance(simulate, Mapping) else {}
    return found if isinstance(found, Mapping) else {}
