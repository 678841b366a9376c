"""What a tool is: a typed function with a policy, and the registry that validates calls to it.

A tool declares pydantic models for its arguments and result, a description for the reasoning
engine, a timeout, a retry policy, an optional compensating tool, the capability pool whose
workers run it, the credential scope it needs, an optional rate limit, and checks the evaluator
applies to its results. Every call receives an idempotency key, and a tool must use it for its side
effects so that running the same call twice changes nothing the second time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar, get_type_hints

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


class UnknownToolError(ToolError):
    category = "unknown_tool"


class InvalidArgumentsError(ToolError):
    category = "invalid_arguments"


HUMAN_RETRY = "retry requested by a human"
"""How the feedback of an attempt a human asked for begins."""


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
    cancelled: Callable[[], bool] = field(default=lambda: False)
    """True once the goal was cancelled: a long-running tool should stop at the next chance."""

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
