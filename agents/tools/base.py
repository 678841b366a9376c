"""What a tool is: a typed function with a policy, and the registry that validates calls to it.

A tool declares pydantic models for its arguments and result, a description for the reasoning
engine, a timeout, a retry policy, an optional compensating tool, the capability pool whose
workers run it, the credential scope it needs, an optional rate limit, and checks the evaluator
applies to its results. Every call receives an idempotency key, and a tool must use it for its side
effects so that running the same call twice changes nothing the second time. Every call also
receives a fencing token (see ``agents.tools.effects``) and a deadline, and can tell when it should
stop (``ToolContext.cancelled`` and ``ToolContext.checkpoint``).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Final, Generic, TypeVar, get_type_hints

from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ValidationError

A = TypeVar("A", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


class ToolError(Exception):
    """A tool failed; ``category`` and ``retryable`` say what should happen next."""

    category = "tool_error"
    retryable = False

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


class TransientToolError(ToolError):
    """The call may succeed if repeated later (a 503, a timeout of a dependency)."""

    category = "transient"
    retryable = True


class PermanentToolError(ToolError):
    """The call will not succeed as it is (bad data, a refusal)."""

    category = "permanent"


class PartialToolError(ToolError):
    """The call did part of its work; ``details['done']`` lists what must be rolled back."""

    category = "partial"


class ToolTimeoutError(ToolError):
    """The call overstayed its timeout; it may still have taken effect."""

    category = "timeout"
    retryable = True


class CancelledError(ToolError):
    """The call's goal was cancelled and the call did nothing."""

    category = "cancelled"


class SupersededError(ToolError):
    """A newer attempt or a compensation owns the effect's key; the call did nothing."""

    category = "superseded"


class UnknownToolError(ToolError):
    category = "unknown_tool"


class UnreportableResultError(ToolError):
    """The call returned, but its result cannot be carried by an event (a NUL character, a
    lone surrogate, a number past the contract's range): the call may have acted."""

    category = "unreportable_result"


class InvalidArgumentsError(ToolError):
    category = "invalid_arguments"


HUMAN_RETRY = "retry requested by a human"
"""How the feedback of an attempt a human asked for begins."""

COMPENSATION_FENCE: Final = 2**62
"""The fencing token of every compensation: above any action's, so once a compensation has
claimed a key no attempt of the action can apply its effect any more."""

_ATTEMPT_BITS: Final = 20


def fenced_keys(key: str) -> tuple[str, ...]:
    """What a call under effect ``key`` claims: its step's stem (``<goal>:<step>`` of a
    ``<goal>:<step>:<digest>`` key) first, then the key. The stem is shared by every key the step
    ever had, so an attempt under a key its step has since replaced (a human's ``set``, a
    semantic retry) is refused once a later attempt or a compensation claimed the step."""
    stem, sep, _ = key.rpartition(":")
    return (stem, key) if sep and ":" in stem else (key,)


def action_fence(plan_version: int, attempt: int) -> int:
    """The fencing token of an action attempt: a newer plan version wins, then a later attempt."""
    if not 0 < attempt < 1 << _ATTEMPT_BITS or plan_version < 0:
        raise ValueError(f"no fence for plan version {plan_version}, attempt {attempt}")
    fence = (plan_version << _ATTEMPT_BITS) | attempt
    if fence >= COMPENSATION_FENCE:
        raise ValueError(f"plan version {plan_version} is too large to fence")
    return fence


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed call is repeated."""

    max_attempts: int = 3
    initial_delay_s: float = 0.2
    factor: float = 2.0
    max_delay_s: float = 10.0
    jitter: float = 0.5  # a delay is drawn from [base * (1 - jitter), base]
    retry_on: tuple[str, ...] = ("transient", "timeout", "lease_expired", "semantic")
    escalate_when_exhausted: bool = True  # else the step fails for good

    def base_delay(self, attempt: int) -> float:
        """The backoff before retrying after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_delay_s, self.initial_delay_s * self.factor ** (attempt - 1)))

    def delay(self, attempt: int, draw: float) -> float:
        """The jittered delay, ``draw`` uniform in [0, 1)."""
        return self.base_delay(attempt) * (1.0 - self.jitter * draw)


@dataclass(frozen=True)
class ToolResources:
    """What the process gives its tools: the ledger database and a folder for local artefacts."""

    db: ConnectionPool
    sandbox_dir: Path


_POLL_S: Final = 0.1  # how often a cooperative wait looks at the goal's cancel flag and deadline


def _never() -> bool:
    return False


@dataclass(frozen=True)
class ToolContext:
    """Everything a tool call knows besides its arguments."""

    goal_id: str
    task_id: str
    step_id: str
    attempt: int
    idempotency_key: str
    goal_input: Mapping[str, Any]
    resources: ToolResources
    feedback: str | None = None
    goal_cancelled: Callable[[], bool] = field(default=_never)
    """True once the goal was cancelled (never for a compensation, which runs because of it)."""
    fence: int = 0
    """The attempt's fencing token; 0 when unfenced (see ``agents.tools.effects.fenced``)."""
    undoes: str | None = None
    """For a compensation: the idempotency key of the effect it undoes."""
    deadline: float | None = None
    """The ``time.monotonic()`` value by which the call must be done."""
    given_up: threading.Event = field(default_factory=threading.Event)
    """Set by the worker when it stops waiting for the call (its timeout passed)."""

    def cancelled(self) -> bool:
        """True once the call should stop: it timed out, or its goal was cancelled."""
        return self._timed_out() or self.goal_cancelled()

    def checkpoint(self) -> None:
        """Raise if the call should stop now; a long tool calls it between steps.

        Raises ``ToolTimeoutError`` once the worker gave up on the call or its deadline passed,
        ``CancelledError`` once its goal was cancelled. ``cancelled`` promises the call did
        nothing: a tool that has already taken part of its effect must not let it through, but
        report what it did (``PartialToolError``) or finish.
        """
        if self._timed_out():
            raise ToolTimeoutError(f"{self.step_id}: the call's time is up; it stopped")
        if self.goal_cancelled():
            raise CancelledError(f"{self.step_id}: goal {self.goal_id} was cancelled")

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, stopping early through ``checkpoint``."""
        until = time.monotonic() + seconds
        self.checkpoint()
        while (left := until - time.monotonic()) > 0:
            self.given_up.wait(min(left, _POLL_S))
            self.checkpoint()

    def _timed_out(self) -> bool:
        past = self.deadline is not None and time.monotonic() >= self.deadline
        return past or self.given_up.is_set()

    def simulate(self, tool: str) -> Mapping[str, Any]:
        """The goal's ``simulate`` switches for ``tool`` (see docs/tools.md), or none."""
        switches = self.goal_input.get("simulate", {})
        found = switches.get(tool, {}) if isinstance(switches, Mapping) else {}
        return found if isinstance(found, Mapping) else {}


Check = Callable[[Any, Any], str | None]
"""A result check: (arguments, result) -> a problem description, or None when fine."""


@dataclass(frozen=True)
class Tool(Generic[A, R]):
    """One typed tool."""

    name: str
    description: str
    args: type[A]
    result: type[R]
    run: Callable[[A, ToolContext], R]
    timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    compensation: str | None = None
    pool: str = "default"
    scope: tuple[str, ...] = ()
    rate_limit_per_s: float | None = None
    checks: tuple[Check, ...] = ()
    confidence_threshold: float = 0.0  # verdicts on this tool below it escalate
    # Computes and returns at once (no I/O, no waiting): the worker runs it on the thread that
    # handles the record, without handing it to a thread of its own, so its timeout is not
    # enforced. Two thread hand-offs cost more than such a tool's whole run.
    inline: bool = False

    def parse_args(self, raw: Mapping[str, Any]) -> A:
        try:
            return self.args.model_validate(dict(raw))
        except ValidationError as exc:
            raise InvalidArgumentsError(
                f"invalid arguments for {self.name}: {exc.error_count()} error(s)",
                details={"errors": exc.errors(include_url=False, include_context=False)},
            ) from exc

    def spec(self) -> dict[str, Any]:
        """The description a reasoning engine sees (OpenAI function-tool shape)."""
        return self._spec

    @cached_property
    def _spec(self) -> dict[str, Any]:  # built once: JSON schemas are not cheap
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.args.model_json_schema(),
        }


def tool(
    *,
    name: str | None = None,
    timeout_s: float = 30.0,
    retry: RetryPolicy | None = None,
    compensation: str | None = None,
    pool: str = "default",
    scope: Iterable[str] = (),
    rate_limit_per_s: float | None = None,
    checks: Iterable[Check] = (),
    confidence_threshold: float = 0.0,
    inline: bool = False,
) -> Callable[[Callable[[A, ToolContext], R]], Tool[A, R]]:
    """Turn ``def fn(args: ArgsModel, ctx: ToolContext) -> ResultModel`` into a ``Tool``.

    The docstring becomes the description the engine sees; the type hints give the models.
    """

    def wrap(fn: Callable[[A, ToolContext], R]) -> Tool[A, R]:
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        return Tool(
            name=name or fn.__name__,
            description=inspect.cleandoc(fn.__doc__ or ""),
            args=hints[params[0]],
            result=hints["return"],
            run=fn,
            timeout_s=timeout_s,
            retry=retry or RetryPolicy(),
            compensation=compensation,
            pool=pool,
            scope=tuple(scope),
            rate_limit_per_s=rate_limit_per_s,
            checks=tuple(checks),
            confidence_threshold=confidence_threshold,
            inline=inline,
        )

    return wrap


class Registry:
    """The tools a mesh knows, by name."""

    def __init__(self, tools: Iterable[Tool[Any, Any]] = ()) -> None:
        self._tools: dict[str, Tool[Any, Any]] = {}
        self._specs: list[dict[str, Any]] | None = None
        for t in tools:
            self.register(t)

    def register(self, t: Tool[Any, Any]) -> None:
        if t.name in self._tools:
            raise ValueError(f"tool {t.name!r} registered twice")
        self._tools[t.name] = t
        self._specs = None

    def get(self, name: str) -> Tool[Any, Any]:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownToolError(
                f"no tool named {name!r}; known: {sorted(self._tools)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Any:
        return iter(self._tools.values())

    def specs(self) -> list[dict[str, Any]]:
        """Every tool's engine-facing description."""
        if self._specs is None:
            self._specs = [t.spec() for t in self._tools.values() if not t.name.startswith("_")]
        return self._specs
