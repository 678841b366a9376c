"""The engine interface. The runtime never depends on a particular model.

An engine does two things: turn a goal into a plan draft, and judge a task's outcome. The runtime
validates what comes back (``validate`` in the requests); an engine that can repair its output
(an LLM told what was wrong) calls ``validate`` itself and retries, and gives up with an
``EngineError`` whose category says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from agents.enums import Decision
from agents.events import Usage


class PlanStep(BaseModel):
    """One step of a plan: a tool call, the steps it waits for.

    An argument may be ``{"$ref": "<step id>.<result field>"}``: the planner replaces it, at
    dispatch, with that field of the named step's result. The step must be among the
    dependencies (directly or transitively).
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)


class PlanDraft(BaseModel):
    """What an engine proposes for a goal."""

    model_config = ConfigDict(extra="forbid")

    steps: list[PlanStep]
    rationale: str = ""


class Judgement(BaseModel):
    """What an engine thinks of a task's outcome."""

    model_config = ConfigDict(extra="forbid")

    decision: Decision
    confidence: float = Field(ge=0.0, le=1.0)
    reason: str
    feedback: str | None = None


@dataclass(frozen=True)
class PlanRequest:
    goal_id: str
    text: str
    input: Mapping[str, Any]
    tools: Sequence[Mapping[str, Any]]  # Tool.spec() of every tool the plan may use
    max_steps: int
    validate: Callable[[PlanDraft], None]  # raises PlanInvalid with the reason
    context: str = ""  # earlier failures, for a re-plan
    deadline: datetime | None = None  # the goal's: an engine waiting for its server stops there


@dataclass(frozen=True)
class JudgeRequest:
    goal_id: str
    goal_text: str
    step_id: str
    tool: Mapping[str, Any]  # the tool's spec
    arguments: Mapping[str, Any]
    outcome: Literal["completed", "failed"]
    result: Mapping[str, Any]  # the result, or the failure's category/message/details
    problems: Sequence[str]  # what the runtime's own checks found
    goal_input: Mapping[str, Any] = field(default_factory=dict)
    deadline: datetime | None = None  # the goal's, as for a plan


@dataclass(frozen=True)
class Planned:
    draft: PlanDraft
    usage: Usage = field(default_factory=Usage)
    engine: str = ""


@dataclass(frozen=True)
class Judged:
    judgement: Judgement
    usage: Usage = field(default_factory=Usage)


class EngineError(Exception):
    """The engine could not produce a usable answer; ``category`` says why."""

    def __init__(self, category: str, message: str, *, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.category = category
        self.usage = usage or Usage()


class PlanInvalid(Exception):
    """A plan draft broke a rule; the message is written for the engine to repair it."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category


class Engine(Protocol):
    name: str

    def plan(self, request: PlanRequest) -> Planned: ...

    def judge(self, request: JudgeRequest) -> Judged: ...


JsonDict = dict[str, Any]
