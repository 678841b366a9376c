"""The OpenAI engine, driven through the real ``openai`` client against a scripted local server:
plans and verdicts, repairs of bad output, give-ups, transport failures, usage and cost."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel, Field

from agents.engines.base import Engine, EngineError, JudgeRequest, PlanDraft, PlanRequest
from agents.engines.openai_engine import DEFAULT_PRICES, OpenAIEngine, Price
from agents.planner.plan import validate_plan
from agents.runtime.errors import ConfigError
from agents.tools.base import Registry, ToolContext, tool
from tests.fakes.chat_server import (
    Call,
    ChatServer,
    Drop,
    HttpError,
    Reply,
    Text,
    scripted_chat_server,
)

pytestmark = pytest.mark.unit

MAX_STEPS = 5


class LookupArgs(BaseModel):
    email: str


class LookupResult(BaseModel):
    customer_id: str


class ChargeArgs(BaseModel):
    customer_id: str
    amount_cents: int = Field(gt=0)


class ChargeResult(BaseModel):
    receipt: str


class NotifyArgs(BaseModel):
    text: str


class NotifyResult(BaseModel):
    sent: bool


@tool()
def lookup_customer(args: LookupArgs, ctx: ToolContext) -> LookupResult:
    """Find a customer's id from their e-mail address."""
    return LookupResult(customer_id="c-1")


@tool()
def charge(args: ChargeArgs, ctx: ToolContext) -> ChargeResult:
    """Charge a customer an amount in cents."""
    return ChargeResult(receipt="r-1")


@tool()
def notify(args: NotifyArgs, ctx: ToolContext) -> NotifyResult:
    """Send the customer a message."""
    return NotifyResult(sent=True)


REGISTRY = Registry([lookup_customer, charge, notify])


def _step(step_id: str, tool_name: str, arguments: dict[str, Any], *deps: str) -> dict[str, Any]:
    return {"id": step_id, "tool": tool_name, "arguments": arguments, "depends_on": list(deps)}


def _plan(*steps: dict[str, Any]) -> str:
    return json.dumps({"steps": list(steps), "rationale": "look up, charge, tell"})


FIND = _step("find", "lookup_customer", {"email": "alice@example.com"})
BILL = _step(
    "bill", "charge", {"customer_id": {"$ref": "find.customer_id"}, "amount_cents": 500}, "find"
)
TELL = _step("tell", "notify", {"text": "you were charged"}, "bill")
GOOD_PLAN = _plan(FIND, BILL, TELL)

EngineFactory = Callable[..., OpenAIEngine]


@pytest.fixture
def make_engine() -> Iterator[EngineFactory]:
    """Engines pointed at a scripted server, closed after the test."""
    engines: list[OpenAIEngine] = []

    def make(server: ChatServer, **overrides: Any) -> OpenAIEngine:
        options: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "api_key": "test-key",
            "base_url": server.base_url,
            "max_retries": 0,
            "retry_for_s": 0,  # a server error is final unless a test asks for patience
            "timeout_s": 10,
        }
        engine = OpenAIEngine(**(options | overrides))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def _validate(draft: PlanDraft) -> None:
    validate_plan(draft, REGISTRY, MAX_STEPS)


def plan_request(context: str = "") -> PlanRequest:
    return PlanRequest(
        goal_id="goal-1",
        text="Charge alice 5 euros and tell her",
        input={"email": "alice@example.com"},
        tools=REGISTRY.specs(),
        max_steps=MAX_STEPS,
        validate=_validate,
        context=context,
    )


def judge_request() -> JudgeRequest:
    return JudgeRequest(
        goal_id="goal-1",
        goal_text="Charge alice 5 euros and tell her",
        step_id="bill",
        tool=charge.spec(),
        arguments={"customer_id": "c-1", "amount_cents": 500},
        outcome="completed",
        result={"receipt": "r-1"},
        problems=[],
    )


def last_message(server: ChatServer, request: int) -> dict[str, Any]:
    message: dict[str, Any] = server.requests[request]["messages"][-1]
    return message


VERDICT = json.dumps({"decision": "accept", "confidence": 0.9, "reason": "receipt issued"})


def test_a_good_plan_on_the_first_reply(make_engine: EngineFactory) -> None:
    script = [Call("submit_plan", GOOD_PLAN, prompt_tokens=1200, completion_tokens=300)]
    with scripted_chat_server(script) as server:
        engine: Engine = make_engine(server)  # mypy checks that it meets the protocol
        planned = engine.plan(plan_request())

    assert [s.id for s in planned.draft.steps] == ["find", "bill", "tell"]
    assert planned.draft.steps[1].arguments["customer_id"] == {"$ref": "find.customer_id"}
    assert planned.engine == "openai:gpt-4o-mini"
    assert planned.usage.input_tokens == 1200
    assert planned.usage.output_tokens == 300
    assert planned.usage.cost_usd == pytest.approx((1200 * 0.15 + 300 * 0.60) / 1_000_000)


def test_the_request_forces_submit_plan_and_describes_the_tools(
    make_engine: EngineFactory,
) -> None:
    with scripted_chat_server([Call("submit_plan", GOOD_PLAN)]) as server:
        make_engine(server).plan(plan_request(context="billing was declined last time"))

    body = server.requests[0]
    assert body["model"] == "gpt-4o-mini"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "submit_plan"}}
    [function_tool] = body["tools"]
    assert function_tool["function"]["name"] == "submit_plan"
    assert function_tool["function"]["parameters"] == PlanDraft.model_json_schema()
    system, user = body["messages"]
    for expected in ("lookup_customer", "charge", "notify", "amount_cents", "$ref", "at most 5"):
        assert expected in system["content"]
    assert "billing was declined last time" in system["content"]
    assert "Charge alice 5 euros" in user["content"]
    assert "alice@example.com" in user["content"]


def test_non_json_arguments_are_repaired(make_engine: EngineFactory) -> None:
    script = [Call("submit_plan", '{"steps": [ oops'), Call("submit_plan", GOOD_PLAN)]
    with scripted_chat_server(script) as server:
        planned = make_engine(server).plan(plan_request())

    assert len(planned.draft.steps) == 3
    assert planned.usage.input_tokens == 200
    assert planned.usage.output_tokens == 40
    echoed, answer = server.requests[1]["messages"][-2:]
    assert echoed["role"] == "assistant"
    assert echoed["tool_calls"][0]["function"]["arguments"] == '{"steps": [ oops'
    assert answer["role"] == "tool"
    assert answer["tool_call_id"] == echoed["tool_calls"][0]["id"]
    assert "not valid JSON" in answer["content"]


def test_a_call_to_an_unknown_function_is_repaired(make_engine: EngineFactory) -> None:
    script = [Call("make_plan", GOOD_PLAN), Call("submit_plan", GOOD_PLAN)]
    with scripted_chat_server(script) as server:
        planned = make_engine(server).plan(plan_request())

    assert len(planned.draft.steps) == 3
    assert "no function 'make_plan'" in last_message(server, 1)["content"]


def test_a_cyclic_plan_is_repaired(make_engine: EngineFactory) -> None:
    cyclic = _plan(
        _step("find", "lookup_customer", {"email": "a@example.com"}, "tell"),
        _step("tell", "notify", {"text": "hi"}, "find"),
    )
    script = [Call("submit_plan", cyclic), Call("submit_plan", GOOD_PLAN)]
    with scripted_chat_server(script) as server:
        planned = make_engine(server).plan(plan_request())

    assert len(planned.draft.steps) == 3
    assert "dependency cycle" in last_message(server, 1)["content"]


def test_a_plan_off_the_schema_is_repaired(make_engine: EngineFactory) -> None:
    script = [Call("submit_plan", '{"rationale": "no steps"}'), Call("submit_plan", GOOD_PLAN)]
    with scripted_chat_server(script) as server:
        make_engine(server).plan(plan_request())

    repair = last_message(server, 1)["content"]
    assert "do not fit its schema" in repair
    assert "steps: Field required" in repair


def test_invalid_arguments_past_the_repairs_give_up_with_summed_usage(
    make_engine: EngineFactory,
) -> None:
    bad = _plan(_step("bill", "charge", {"customer_id": "c-1", "amount_cents": "five"}))
    script = [Call("submit_plan", bad, prompt_tokens=50, completion_tokens=10)] * 3
    with scripted_chat_server(script) as server:
        engine = make_engine(server, max_repairs=2)
        with pytest.raises(EngineError) as raised:
            engine.plan(plan_request())

    assert raised.value.category == "invalid_arguments"
    assert "amount_cents" in str(raised.value)
    assert len(server.requests) == 3
    assert raised.value.usage.input_tokens == 150
    assert raised.value.usage.output_tokens == 30
    assert raised.value.usage.cost_usd == pytest.approx((150 * 0.15 + 30 * 0.60) / 1_000_000)


def test_text_without_a_function_call_gives_up_as_invalid_output(
    make_engine: EngineFactory,
) -> None:
    script = [Text("Here is my plan: first look up the customer.")] * 2
    with scripted_chat_server(script) as server:
        engine = make_engine(server, max_repairs=1)
        with pytest.raises(EngineError) as raised:
            engine.plan(plan_request())

    assert raised.value.category == "invalid_output"
    assert raised.value.usage.input_tokens == 200
    echoed, answer = server.requests[1]["messages"][-2:]
    assert echoed == {
        "role": "assistant",
        "content": "Here is my plan: first look up the customer.",
    }
    assert answer["role"] == "user"
    assert "called no function" in answer["content"]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_make_the_engine_unavailable(make_engine: EngineFactory, status: int) -> None:
    with scripted_chat_server([HttpError(status)]) as server:
        engine = make_engine(server)
        with pytest.raises(EngineError) as raised:
            engine.plan(plan_request())

    assert raised.value.category == "engine_unavailable"
    assert f"HTTP {status}" in str(raised.value)


def test_an_unreachable_server_makes_the_engine_unavailable(make_engine: EngineFactory) -> None:
    with scripted_chat_server([]) as server:
        dead_url = server.base_url  # nothing listens here once the block ends
    engine = make_engine(server, base_url=dead_url)

    with pytest.raises(EngineError) as raised:
        engine.plan(plan_request())

    assert raised.value.category == "engine_unavailable"


def test_a_server_that_drops_connections_is_asked_again_until_it_answers(
    make_engine: EngineFactory,
) -> None:
    with scripted_chat_server([Drop(), Drop(), Call("submit_plan", GOOD_PLAN)]) as server:
        planned = make_engine(server, retry_for_s=30).plan(plan_request())
    assert [s.id for s in planned.draft.steps] == ["find", "bill", "tell"]
    assert len(server.requests) == 3


def test_a_rate_limited_answer_is_asked_again_after_the_wait_it_names(
    make_engine: EngineFactory,
) -> None:
    script: list[Reply] = [HttpError(429, retry_after="1"), Call("submit_verdict", VERDICT)]
    with scripted_chat_server(script) as server:
        judged = make_engine(server, retry_for_s=30).judge(judge_request())
    assert judged.judgement.decision == "accept"
    assert server.arrivals[1] - server.arrivals[0] >= 1.0  # the server's Retry-After, not 0.5 s


def test_a_server_away_longer_than_the_engine_waits_fails_with_its_category(
    make_engine: EngineFactory,
) -> None:
    with scripted_chat_server([]) as server:  # 500 to every request
        engine = make_engine(server, retry_for_s=1.0)
        with pytest.raises(EngineError) as raised:
            engine.plan(plan_request())
    assert raised.value.category == "engine_unavailable"
    assert "gave up after 2 tries" in str(raised.value)  # asked at 0 and 0.5 s; 1.5 s is too late
    assert len(server.requests) == 2


def test_the_engine_does_not_wait_past_the_goals_deadline(make_engine: EngineFactory) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=0.2)
    with scripted_chat_server([HttpError(503)]) as server:
        engine = make_engine(server, retry_for_s=60)
        with pytest.raises(EngineError, match="gave up after 1 tries"):
            engine.plan(replace(plan_request(), deadline=soon))
    assert len(server.requests) == 1


def test_an_unreadable_wait_falls_back_to_the_backoff(make_engine: EngineFactory) -> None:
    script: list[Reply] = [HttpError(503, retry_after="whenever"), Call("submit_plan", GOOD_PLAN)]
    with scripted_chat_server(script) as server:
        make_engine(server, retry_for_s=30).plan(plan_request())
    assert len(server.requests) == 2


def test_a_server_error_after_a_repair_keeps_the_usage_spent(make_engine: EngineFactory) -> None:
    with scripted_chat_server([Call("submit_plan", "not json")]) as server:  # then 500
        engine = make_engine(server)
        with pytest.raises(EngineError) as raised:
            engine.plan(plan_request())

    assert raised.value.category == "engine_unavailable"
    assert raised.value.usage.input_tokens == 100


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_a_configuration_problem(
    make_engine: EngineFactory, status: int
) -> None:
    with scripted_chat_server([HttpError(status, "Incorrect API key provided")]) as server:
        engine = make_engine(server)
        with pytest.raises(EngineError) as raised:
            engine.plan(plan_request())

    assert raised.value.category == "engine_config"
    assert "OPENAI_API_KEY" in str(raised.value)
    assert "OPENAI_BASE_URL" in str(raised.value)


def test_an_unknown_model_is_a_configuration_problem(make_engine: EngineFactory) -> None:
    with scripted_chat_server([HttpError(404, "model not found")]) as server:
        engine = make_engine(server)
        with pytest.raises(EngineError) as raised:
            engine.judge(judge_request())

    assert raised.value.category == "engine_config"
    assert "MESH_LLM_MODEL" in str(raised.value)


def test_judge_returns_the_verdict(make_engine: EngineFactory) -> None:
    script = [Call("submit_verdict", VERDICT, prompt_tokens=400, completion_tokens=25)]
    with scripted_chat_server(script) as server:
        judged = make_engine(server).judge(judge_request())

    assert judged.judgement.decision == "accept"
    assert judged.judgement.confidence == 0.9
    assert judged.usage.input_tokens == 400
    assert judged.usage.output_tokens == 25
    body = server.requests[0]
    assert body["tool_choice"]["function"]["name"] == "submit_verdict"
    assert "r-1" in body["messages"][1]["content"]


def test_judge_repairs_a_confidence_out_of_range(make_engine: EngineFactory) -> None:
    too_sure = json.dumps({"decision": "accept", "confidence": 1.7, "reason": "certain"})
    script = [Call("submit_verdict", too_sure), Call("submit_verdict", VERDICT)]
    with scripted_chat_server(script) as server:
        judged = make_engine(server).judge(judge_request())

    assert judged.judgement.confidence == 0.9
    assert judged.usage.input_tokens == 200
    assert "confidence" in last_message(server, 1)["content"]


def test_a_model_without_a_price_costs_nothing_and_warns_once(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    script = [Call("submit_plan", GOOD_PLAN), Call("submit_verdict", VERDICT)]
    with caplog.at_level(logging.WARNING), scripted_chat_server(script) as server:
        engine = make_engine(server, model="local-llama")
        planned = engine.plan(plan_request())
        engine.judge(judge_request())

    assert planned.usage.input_tokens == 100
    assert planned.usage.cost_usd == 0.0
    assert len([r for r in caplog.records if "no price" in r.getMessage()]) == 1


def test_prices_can_be_given_and_dated_snapshots_use_their_base_price(
    make_engine: EngineFactory,
) -> None:
    prices = {"house-model": Price(input_per_mtok=1.0, output_per_mtok=2.0)}
    script = [Call("submit_plan", GOOD_PLAN, prompt_tokens=1_000_000, completion_tokens=0)] * 2
    with scripted_chat_server(script) as server:
        custom = make_engine(server, model="house-model", prices=prices).plan(plan_request())
        dated = make_engine(server, model="gpt-4o-2024-08-06").plan(plan_request())

    assert custom.usage.cost_usd == pytest.approx(1.0)
    assert dated.usage.cost_usd == pytest.approx(DEFAULT_PRICES["gpt-4o"].input_per_mtok)


@pytest.mark.parametrize("log_prompts", [False, True])
def test_prompt_bodies_are_logged_only_when_asked(
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    log_prompts: bool,
) -> None:
    if log_prompts:
        monkeypatch.setenv("MESH_LOG_PROMPTS", "1")
    script = [Call("submit_plan", "not json"), Call("submit_plan", GOOD_PLAN)]
    with caplog.at_level(logging.DEBUG), scripted_chat_server(script) as server:
        make_engine(server).plan(plan_request())

    logged = caplog.text
    assert ("alice@example.com" in logged) is log_prompts
    assert ("you were charged" in logged) is log_prompts


def test_from_env_reads_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "OPENAI_API_KEY": "k",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "MESH_LLM_MODEL": "gpt-4.1-mini",
        "MESH_LLM_MAX_REPAIRS": "4",
    }
    engine = OpenAIEngine.from_env(env)
    try:
        assert engine.name == "openai:gpt-4.1-mini"
        assert engine.max_repairs == 4
    finally:
        engine.close()


def test_from_env_defaults_the_model() -> None:
    engine = OpenAIEngine.from_env({"OPENAI_API_KEY": "k"})
    try:
        assert engine.model == "gpt-4o-mini"
        assert engine.max_repairs == 2
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "OPENAI_API_KEY"),
        ({"OPENAI_API_KEY": "k", "MESH_LLM_MAX_REPAIRS": "two"}, "MESH_LLM_MAX_REPAIRS"),
        ({"OPENAI_API_KEY": "k", "MESH_LLM_MAX_REPAIRS": "-1"}, "MESH_LLM_MAX_REPAIRS"),
    ],
)
def test_from_env_names_what_is_wrong(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        OpenAIEngine.from_env(env)
