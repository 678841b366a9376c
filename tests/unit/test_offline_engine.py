"""The offline engine plans from playbooks, validates its drafts, and judges by fixed rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from agents.engines.base import EngineError, JudgeRequest, PlanDraft, PlanRequest
from agents.engines.offline import OfflineEngine
from agents.events import Usage
from agents.planner.plan import validate_plan
from agents.tools.base import Registry, ToolContext, tool
from agents.tools.onboarding import onboarding_registry

pytestmark = pytest.mark.unit

CUSTOMER = {
    "company": "Acme Rockets",
    "email": "Ops@Acme.example",
    "plan": "pro",
    "seats": 12,
}


class EchoArgs(BaseModel):
    value: str = ""


class EchoResult(BaseModel):
    value: str


@tool()
def echo(args: EchoArgs, ctx: ToolContext) -> EchoResult:
    """Return the value it is given."""
    return EchoResult(value=args.value)


def _request(
    text: str,
    data: Mapping[str, Any],
    *,
    registry: Registry | None = None,
    max_steps: int = 20,
) -> PlanRequest:
    reg = registry or onboarding_registry()

    def validate(draft: PlanDraft) -> None:
        validate_plan(draft, reg, max_steps)

    return PlanRequest(
        goal_id="goal-1",
        text=text,
        input=data,
        tools=reg.specs(),
        max_steps=max_steps,
        validate=validate,
    )


def _deps(draft: PlanDraft) -> dict[str, list[str]]:
    return {s.id: sorted(s.depends_on) for s in draft.steps}


def test_onboarding_playbook_is_a_valid_plan_with_parallel_infra_and_billing() -> None:
    planned = OfflineEngine().plan(_request("Onboard Acme Rockets", CUSTOMER))

    order = validate_plan(planned.draft, onboarding_registry(), 20)
    assert order[0] == "validate"
    assert order[-1] == "notify"
    assert _deps(planned.draft) == {
        "validate": [],
        "organisation": ["validate"],
        "infrastructure": ["organisation"],
        "billing": ["organisation"],
        "email": ["billing", "infrastructure"],
        "notify": ["email"],
    }
    assert planned.engine == "offline"
    assert planned.usage == Usage()


def test_onboarding_playbook_takes_later_values_from_earlier_results() -> None:
    draft = OfflineEngine().plan(_request("onboarding a customer", CUSTOMER)).draft
    steps = {s.id: s for s in draft.steps}

    assert steps["validate"].tool == "validate_customer_data"
    assert steps["validate"].arguments == CUSTOMER
    assert steps["organisation"].arguments == {
        "name": {"$ref": "validate.company"},
        "slug": {"$ref": "validate.slug"},
    }
    for step_id in ("infrastructure", "billing", "email"):
        assert steps[step_id].arguments["org_id"] == {"$ref": "organisation.org_id"}
    assert steps["billing"].arguments["plan"] == {"$ref": "validate.plan"}
    assert steps["email"].arguments["to"] == {"$ref": "validate.email"}
    assert "Acme Rockets" in steps["notify"].arguments["text"]


def test_onboarding_playbook_reads_a_nested_customer_and_an_explicit_name() -> None:
    data = {"playbook": "onboarding", "customer": {**CUSTOMER, "channel": "#sales"}}
    draft = OfflineEngine().plan(_request("welcome a new client", data)).draft
    steps = {s.id: s for s in draft.steps}

    assert steps["validate"].arguments == CUSTOMER
    assert steps["notify"].arguments["channel"] == "#sales"


def test_onboarding_with_missing_fields_is_refused_with_the_validation_category() -> None:
    data = {k: v for k, v in CUSTOMER.items() if k != "email"}
    with pytest.raises(EngineError) as caught:
        OfflineEngine().plan(_request("onboard Acme", data))
    assert caught.value.category == "invalid_arguments"
    assert "email" in str(caught.value)


def test_the_step_limit_applies_to_playbooks() -> None:
    with pytest.raises(EngineError) as caught:
        OfflineEngine().plan(_request("onboard Acme", CUSTOMER, max_steps=3))
    assert caught.value.category == "too_many_steps"


def _steps(*specs: tuple[str, Sequence[str]]) -> dict[str, Any]:
    return {
        "playbook": "steps",
        "steps": [
            {"id": sid, "tool": "echo", "arguments": {"value": sid}, "depends_on": list(deps)}
            for sid, deps in specs
        ],
    }


def test_steps_playbook_builds_any_dag() -> None:
    registry = Registry([echo])
    data = _steps(("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"]), ("e", []))

    draft = OfflineEngine().plan(_request("anything", data, registry=registry)).draft

    assert _deps(draft) == {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}
    assert [s.arguments for s in draft.steps][3] == {"value": "d"}


def test_steps_playbook_accepts_references() -> None:
    registry = Registry([echo])
    data = _steps(("a", []), ("b", ["a"]))
    data["steps"][1]["arguments"] = {"value": {"$ref": "a.value"}}

    draft = OfflineEngine().plan(_request("anything", data, registry=registry)).draft

    assert draft.steps[1].arguments == {"value": {"$ref": "a.value"}}


def test_steps_playbook_refuses_a_cycle_with_its_category() -> None:
    registry = Registry([echo])
    data = _steps(("a", ["b"]), ("b", ["a"]))
    with pytest.raises(EngineError) as caught:
        OfflineEngine().plan(_request("anything", data, registry=registry))
    assert caught.value.category == "cyclic_plan"


def test_steps_playbook_refuses_malformed_steps() -> None:
    data = {"playbook": "steps", "steps": [{"id": "Bad Id", "tool": "echo"}]}
    with pytest.raises(EngineError) as caught:
        OfflineEngine().plan(_request("anything", data, registry=Registry([echo])))
    assert caught.value.category == "invalid_plan"
    assert "steps.0.id" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "data"),
    [("write me a poem", {}), ("onboard Acme", {"playbook": "unheard-of"})],
)
def test_an_unknown_goal_is_refused_with_no_playbook(text: str, data: dict[str, Any]) -> None:
    with pytest.raises(EngineError) as caught:
        OfflineEngine().plan(_request(text, data))
    assert caught.value.category == "no_playbook"
    assert "OPENAI_API_KEY" in str(caught.value)
    assert caught.value.usage == Usage()


def _judge(
    outcome: Literal["completed", "failed"],
    result: Mapping[str, Any],
    problems: Sequence[str] = (),
) -> JudgeRequest:
    return JudgeRequest(
        goal_id="goal-1",
        goal_text="onboard Acme",
        step_id="billing",
        tool={"name": "configure_billing"},
        arguments={},
        outcome=outcome,
        result=result,
        problems=problems,
    )


@pytest.mark.parametrize(
    ("outcome", "result", "problems", "decision", "confidence"),
    [
        ("completed", {"account_id": "acct_1"}, [], "accept", 1.0),
        ("completed", {"account_id": "ACCT"}, ["account_id is malformed"], "retry", 0.2),
        ("failed", {"category": "transient", "retryable": True}, [], "retry", 1.0),
        ("failed", {"category": "permanent", "retryable": False}, [], "fail", 1.0),
        ("failed", {"category": "partial"}, [], "fail", 1.0),
    ],
)
def test_judge_rules(
    outcome: Literal["completed", "failed"],
    result: dict[str, Any],
    problems: list[str],
    decision: str,
    confidence: float,
) -> None:
    judged = OfflineEngine().judge(_judge(outcome, result, problems))

    assert judged.judgement.decision == decision
    assert judged.judgement.confidence == confidence
    assert judged.usage == Usage()


def test_a_flawed_result_is_retried_with_its_problems_as_feedback() -> None:
    problems = ["account_id is malformed", "seats differ"]
    judgement = OfflineEngine().judge(_judge("completed", {}, problems)).judgement

    assert judgement.feedback is not None
    assert all(p in judgement.feedback for p in problems)
