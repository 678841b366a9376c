"""A reasoning engine on any OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama,
llama.cpp).

Plans and verdicts come back as function calls whose parameters are the JSON schemas of
``PlanDraft`` and ``Judgement``; ``tool_choice`` forces the call. A reply that calls no function,
calls an unknown one, is not JSON, does not fit the schema or breaks a plan rule goes back to the
model with what was wrong, up to ``max_repairs`` times; then the engine gives up with an
``EngineError`` whose category names the last problem. Tokens are summed over every call,
rejected ones included, and priced from a table.

A server that cannot be reached, or answers 429 or 5xx, is asked again with backoff (0.5 s
doubling to 8 s, or the wait its ``Retry-After`` names) for up to ``retry_for_s`` and never past
the goal's deadline; then the engine gives up with ``engine_unavailable``.

Configuration (``OpenAIEngine.from_env``): ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``,
``MESH_LLM_MODEL``, ``MESH_LLM_MAX_REPAIRS``, ``MESH_LLM_RETRY_S``. Prompt and completion
bodies are logged only when ``MESH_LOG_PROMPTS=1``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import openai
from openai.types import CompletionUsage
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionNamedToolChoiceParam,
)
from pydantic import BaseModel, ValidationError

from agents.engines.base import (
    EngineError,
    Judged,
    Judgement,
    JudgeRequest,
    PlanDraft,
    PlanInvalid,
    Planned,
    PlanRequest,
)
from agents.events import Usage
from agents.runtime.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_MAX_REPAIRS = 2
DEFAULT_RETRY_S = 60.0  # how long a server that is away is waited for, at most
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.5, 8.0
_MAX_ERRORS_SHOWN = 5  # schema errors quoted back to the model; more only add noise
_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")

T = TypeVar("T", bound=BaseModel)
N = TypeVar("N", int, float)


@dataclass(frozen=True)
class Price:
    """What a model costs, in USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        spent = input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok
        return spent / 1_000_000


DEFAULT_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        "gpt-4o": Price(2.50, 10.00),
        "gpt-4o-mini": Price(0.15, 0.60),
        "gpt-4.1": Price(2.00, 8.00),
        "gpt-4.1-mini": Price(0.40, 1.60),
        "gpt-4.1-nano": Price(0.10, 0.40),
    }
)
"""OpenAI's standard-tier list prices (uncached input), USD per million tokens.

An editable default: pass ``prices=`` for other models, other servers or new prices. A model
missing from the table is recorded at cost 0, with one warning.
"""


def price_for(model: str, prices: Mapping[str, Price]) -> Price | None:
    """The price of ``model``; a dated snapshot (``gpt-4o-2024-08-06``) costs what its base does."""
    return prices.get(model) or prices.get(_SNAPSHOT_SUFFIX.sub("", model))


@dataclass(frozen=True)
class _Function(Generic[T]):
    """The one function the model must call, with the model its arguments must fit."""

    name: str
    description: str
    schema: type[T]

    def tool(self) -> ChatCompletionFunctionToolParam:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.schema.model_json_schema(),
            },
        }

    def choice(self) -> ChatCompletionNamedToolChoiceParam:
        return {"type": "function", "function": {"name": self.name}}


SUBMIT_PLAN = _Function("submit_plan", "Submit the plan for the goal.", PlanDraft)
SUBMIT_VERDICT = _Function("submit_verdict", "Submit the verdict on the step.", Judgement)


class _Rejected(Exception):
    """A reply the engine cannot use; the message is written for the model to repair it."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category


@dataclass
class _Tally:
    """Tokens spent so far in one conversation."""

    price: Price | None
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, usage: CompletionUsage | None) -> None:
        if usage is not None:  # some compatible servers leave usage out
            self.input_tokens += usage.prompt_tokens
            self.output_tokens += usage.completion_tokens

    def usage(self) -> Usage:
        cost = self.price.cost(self.input_tokens, self.output_tokens) if self.price else 0.0
        return Usage(
            input_tokens=self.input_tokens, output_tokens=self.output_tokens, cost_usd=cost
        )


class OpenAIEngine:
    """Plans and judges through function calls on an OpenAI-compatible server."""

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str | None,
        max_repairs: int = DEFAULT_MAX_REPAIRS,
        timeout_s: float = 30,
        max_retries: int = 0,
        retry_for_s: float = DEFAULT_RETRY_S,
        prices: Mapping[str, Price] | None = None,
        log_prompts: bool | None = None,
    ) -> None:
        """``base_url=None`` means ``OPENAI_BASE_URL``, else OpenAI's own API; ``retry_for_s``
        is how long a server that is away is asked again (see the module); ``max_retries`` the
        SDK's own quick retries of each of those calls; ``log_prompts=None`` reads
        ``MESH_LOG_PROMPTS``."""
        _check_config(api_key=api_key, max_repairs=max_repairs, timeout_s=timeout_s)
        if retry_for_s < 0:
            raise ConfigError(f"MESH_LLM_RETRY_S must be 0 or more, not {retry_for_s}")
        self.retry_for_s = retry_for_s
        self.model = model
        self.name = f"openai:{model}"
        self.max_repairs = max_repairs
        self._price = price_for(model, DEFAULT_PRICES if prices is None else prices)
        if self._price is None:
            log.warning("no price for model %s; its cost is recorded as 0", model)
        if log_prompts is None:
            log_prompts = os.environ.get("MESH_LOG_PROMPTS") == "1"
        self._log_prompts = log_prompts
        self._client = _client(api_key, base_url, timeout_s=timeout_s, max_retries=max_retries)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OpenAIEngine:
        """An engine configured from the environment; ``ConfigError`` names what is missing."""
        env = os.environ if env is None else env
        api_key = env.get("OPENAI_API_KEY", "").strip()
        if not api_key:
            raise ConfigError(
                "set OPENAI_API_KEY to use the OpenAI engine "
                "(any non-empty value for a local server that ignores it)"
            )
        return cls(
            model=env.get("MESH_LLM_MODEL", "").strip() or DEFAULT_MODEL,
            api_key=api_key,
            base_url=env.get("OPENAI_BASE_URL", "").strip() or None,
            max_repairs=_int_setting(env, "MESH_LLM_MAX_REPAIRS", DEFAULT_MAX_REPAIRS),
            retry_for_s=_float_setting(env, "MESH_LLM_RETRY_S", DEFAULT_RETRY_S),
            log_prompts=env.get("MESH_LOG_PROMPTS") == "1",
        )

    def close(self) -> None:
        """Release the HTTP connections."""
        self._client.close()

    def plan(self, request: PlanRequest) -> Planned:
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": _plan_instructions(request)},
            {"role": "user", "content": _goal_message(request)},
        ]

        def accept(message: ChatCompletionMessage) -> PlanDraft:
            draft = _read_call(message, SUBMIT_PLAN)
            try:
                request.validate(draft)
            except PlanInvalid as exc:
                raise _Rejected(exc.category, str(exc)) from exc
            return draft

        draft, usage = self._converse(messages, SUBMIT_PLAN, accept, request.deadline)
        return Planned(draft=draft, usage=usage, engine=self.name)

    def judge(self, request: JudgeRequest) -> Judged:
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": _JUDGE_INSTRUCTIONS},
            {"role": "user", "content": _outcome_message(request)},
        ]
        judgement, usage = self._converse(
            messages,
            SUBMIT_VERDICT,
            lambda message: _read_call(message, SUBMIT_VERDICT),
            request.deadline,
        )
        return Judged(judgement=judgement, usage=usage)

    def _converse(
        self,
        messages: list[ChatCompletionMessageParam],
        function: _Function[Any],
        accept: Callable[[ChatCompletionMessage], T],
        deadline: datetime | None = None,
    ) -> tuple[T, Usage]:
        """Ask until ``accept`` takes a reply, telling the model what was wrong each time."""
        tally = _Tally(self._price)
        problem: _Rejected | None = None
        patience = _Patience(self.retry_for_s, deadline)
        for attempt in range(1, self.max_repairs + 2):
            message = self._complete_patiently(messages, function, tally, patience)
            try:
                return accept(message), tally.usage()
            except _Rejected as exc:
                problem = exc
            log.warning(
                "%s reply rejected (%s), attempt %d of %d",
                function.name,
                problem.category,
                attempt,
                self.max_repairs + 1,
            )
            messages.extend(_repair(message, problem, function))
        assert problem is not None  # the loop runs at least once
        raise EngineError(
            problem.category,
            f"no usable {function.name} call after {self.max_repairs + 1} attempt(s): {problem}",
            usage=tally.usage(),
        )

    def _complete_patiently(
        self,
        messages: list[ChatCompletionMessageParam],
        function: _Function[Any],
        tally: _Tally,
        patience: _Patience,
    ) -> ChatCompletionMessage:
        """``_complete``, asked again while the server is away and patience lasts."""
        tries = 1
        while True:
            try:
                return self._complete(messages, function, tally)
            except _Unavailable as exc:
                wait = patience.wait(tries, exc.retry_after_s)
                if wait is None:
                    raise EngineError(
                        "engine_unavailable",
                        f"{exc.error} (gave up after {tries} tries over {patience.spent():.0f}s)",
                        usage=tally.usage(),
                    ) from exc
                log.warning(
                    "model server away (try %d), asking again in %.1fs: %s", tries, wait, exc.error
                )
                time.sleep(wait)
                tries += 1

    def _complete(
        self,
        messages: list[ChatCompletionMessageParam],
        function: _Function[Any],
        tally: _Tally,
    ) -> ChatCompletionMessage:
        """One call; its tokens go into ``tally`` before anything can reject the reply."""
        if self._log_prompts:
            log.info("prompt to %s: %s", self.model, json.dumps(messages, default=str))
        try:
            completion = self._client.chat.completions.create(
                model=self.model,
                messages=list(messages),
                tools=[function.tool()],
                tool_choice=function.choice(),
            )
        except openai.APIError as exc:
            error = _transport_error(
                exc, where=str(self._client.base_url), model=self.model, usage=tally.usage()
            )
            if error.category == "engine_unavailable":
                raise _Unavailable(error, _retry_after_s(exc)) from exc
            raise error from exc
        tally.add(completion.usage)
        if not completion.choices:
            return ChatCompletionMessage(role="assistant", content=None)
        message = completion.choices[0].message
        if self._log_prompts:
            log.info("completion from %s: %s", self.model, message.model_dump_json())
        return message


class _Unavailable(Exception):
    """The server could not be reached or answered 429 or 5xx: worth asking again."""

    def __init__(self, error: EngineError, retry_after_s: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after_s = retry_after_s


class _Patience:
    """How long a conversation waits for a server that is away: ``retry_for_s`` from its first
    wait, and never past the goal's deadline."""

    def __init__(self, retry_for_s: float, deadline: datetime | None) -> None:
        self._started = time.monotonic()
        self._until = self._started + retry_for_s
        if deadline is not None:
            left = (deadline - datetime.now(UTC)).total_seconds()
            self._until = min(self._until, self._started + left)

    def spent(self) -> float:
        return time.monotonic() - self._started

    def wait(self, tries: int, retry_after_s: float | None) -> float | None:
        """How long to wait before try ``tries + 1``, or None when patience would run out."""
        backoff = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** (tries - 1))
        wait = retry_after_s if retry_after_s is not None else backoff
        return wait if time.monotonic() + wait <= self._until else None


def _retry_after_s(exc: openai.APIError) -> float | None:
    """The wait a 429 or 503 answer asks for (``retry-after-ms``, or ``Retry-After`` in seconds
    or as a date), if any."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    headers = exc.response.headers
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        raw = headers.get("retry-after")
        if raw is None:
            return None
        if raw.strip().isdigit():
            return float(raw)
        return max(0.0, (parsedate_to_datetime(raw) - datetime.now(UTC)).total_seconds())
    except (ValueError, TypeError):
        return None  # unreadable: the backoff decides


def _check_config(*, api_key: str, max_repairs: int, timeout_s: float) -> None:
    if not api_key:
        raise ConfigError("the OpenAI engine needs an API key: set OPENAI_API_KEY")
    if max_repairs < 0:
        raise ConfigError(f"MESH_LLM_MAX_REPAIRS must be 0 or more, not {max_repairs}")
    if timeout_s <= 0:
        raise ConfigError(f"the engine timeout must be positive, not {timeout_s}")


def _client(
    api_key: str, base_url: str | None, *, timeout_s: float, max_retries: int
) -> openai.OpenAI:
    try:
        return openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries
        )
    except openai.OpenAIError as exc:
        raise ConfigError(f"cannot configure the OpenAI client: {exc}") from exc


def _int_setting(env: Mapping[str, str], name: str, default: int) -> int:
    return _setting(env, name, default, int, "a whole number")


def _float_setting(env: Mapping[str, str], name: str, default: float) -> float:
    return _setting(env, name, default, float, "a number of seconds")


def _setting(
    env: Mapping[str, str], name: str, default: N, parse: Callable[[str], N], what: str
) -> N:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {what}, not {raw!r}") from None


def _transport_error(exc: openai.APIError, *, where: str, model: str, usage: Usage) -> EngineError:
    """Map an SDK failure (after the SDK's own retries) to what the runtime should do next."""
    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return EngineError("engine_unavailable", f"cannot reach {where}: {exc}", usage=usage)
    status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
    if status is None or status == 429 or status >= 500:
        what = f"HTTP {status}" if status else "an unreadable response"
        return EngineError("engine_unavailable", f"{where} answered {what}", usage=usage)
    if status in (401, 403):
        return EngineError(
            "engine_config",
            f"{where} refused the credentials (HTTP {status}): check OPENAI_API_KEY "
            "and OPENAI_BASE_URL",
            usage=usage,
        )
    if status == 404:
        return EngineError(
            "engine_config",
            f"{where} has no model {model!r} or no chat completions endpoint (HTTP 404): "
            "check MESH_LLM_MODEL and OPENAI_BASE_URL",
            usage=usage,
        )
    # Any other 4xx: the server understood and refused (too long, unsupported parameter).
    return EngineError(
        "engine_rejected",
        f"{where} refused the request (HTTP {status}): {exc.message[:300]}",
        usage=usage,
    )


def _function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    calls = message.tool_calls or []
    return [c for c in calls if isinstance(c, ChatCompletionMessageFunctionToolCall)]


def _read_call(message: ChatCompletionMessage, function: _Function[T]) -> T:
    """The arguments of the reply's call to ``function``, validated; ``_Rejected`` otherwise."""
    calls = _function_calls(message)
    if not calls:
        raise _Rejected("invalid_output", f"the reply called no function; call {function.name}")
    called = calls[0].function
    if called.name != function.name:
        raise _Rejected(
            "unknown_tool",
            f"there is no function {called.name!r}; the only function is {function.name}",
        )
    try:
        return function.schema.model_validate_json(called.arguments)
    except ValidationError as exc:
        raise _Rejected("invalid_output", _explain(exc, function.name)) from exc


def _explain(exc: ValidationError, name: str) -> str:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return f"the {name} arguments are not valid JSON ({errors[0]['msg']})"
    shown = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
        for e in errors[:_MAX_ERRORS_SHOWN]
    )
    more = (
        f" (and {len(errors) - _MAX_ERRORS_SHOWN} more)" if len(errors) > _MAX_ERRORS_SHOWN else ""
    )
    return f"the {name} arguments do not fit its schema: {shown}{more}"


def _repair(
    message: ChatCompletionMessage, problem: _Rejected, function: _Function[Any]
) -> list[ChatCompletionMessageParam]:
    """The rejected reply and the answer to it, so the model sees its mistake in place."""
    text = f"That reply could not be used: {problem}. Call {function.name} again, corrected."
    calls = _function_calls(message)
    if not calls:
        return [
            {"role": "assistant", "content": message.content or ""},
            {"role": "user", "content": text},
        ]
    echoed: ChatCompletionAssistantMessageParam = {
        "role": "assistant",
        "content": message.content,
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in calls
        ],
    }
    # Every call must be answered, or the server refuses the next request.
    answers: list[ChatCompletionMessageParam] = [
        {"role": "tool", "tool_call_id": c.id, "content": text} for c in calls
    ]
    return [echoed, *answers]


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _describe_tool(spec: Mapping[str, Any]) -> str:
    lines = [f"- {spec.get('name')}: {spec.get('description', '')}".rstrip()]
    lines += [
        f"  {key}: {_json(value)}"
        for key, value in spec.items()
        if key not in {"name", "description"}
    ]
    return "\n".join(lines)


def _plan_instructions(request: PlanRequest) -> str:
    parts = [
        "You plan how to reach a user's goal with the tools listed below. Answer by calling "
        f"{SUBMIT_PLAN.name} once with the whole plan.",
        "",
        "Rules:",
        f"- The plan has at least 1 and at most {request.max_steps} steps.",
        "- Each step has an id (lowercase letters, digits and underscores, starting with a "
        "letter) that no other step uses, a tool from the list, and arguments that fit that "
        "tool's parameters.",
        "- depends_on lists the ids of the steps that must finish first. Steps that do not "
        "depend on each other run in parallel. The dependencies must not form a cycle.",
        '- To pass a field of another step\'s result, write the argument as {"$ref": '
        '"<step id>.<result field>"}. That step must be among the dependencies, directly or '
        "through other steps.",
        "",
        "Tools:",
        *(_describe_tool(spec) for spec in request.tools),
    ]
    if request.context:
        parts += ["", "Earlier attempts at this goal went wrong; plan around it:", request.context]
    return "\n".join(parts)


def _goal_message(request: PlanRequest) -> str:
    return f"Goal: {request.text}\nGoal input (JSON): {_json(dict(request.input))}"


_JUDGE_INSTRUCTIONS = f"""\
You judge the outcome of one step of a plan that works toward a user's goal. Answer by calling \
{SUBMIT_VERDICT.name} once.

Decisions:
- accept: the outcome is what the step should produce for the goal.
- retry: running the same step again can succeed; say in feedback what should change.
- replan: this step cannot serve the goal as planned; the goal needs a new plan.
- escalate: a human must decide.
- fail: the goal cannot be reached.
- compensate: the step did something that must be rolled back.

confidence is how sure you are of the decision, from 0 to 1. reason explains it in a sentence \
or two."""


def _outcome_message(request: JudgeRequest) -> str:
    problems = "\n".join(f"- {p}" for p in request.problems) or "none"
    return "\n".join(
        [
            f"Goal: {request.goal_text}",
            f"Step: {request.step_id}",
            f"Tool: {_json(dict(request.tool))}",
            f"Arguments (JSON): {_json(dict(request.arguments))}",
            f"Outcome: {request.outcome}",
            f"Result (JSON): {_json(dict(request.result))}",
            f"Problems found by the runtime's checks:\n{problems}",
        ]
    )
