"""The typed events of the topic contract (docs/contract.md).

Each event is a pydantic model whose Avro schema lives in ``schemas/<Name>.avsc``; the two are
kept in agreement by ``schemas.derive`` and a test. Every event carries the shared ``Envelope``.
Free-form payloads (tool arguments, results, evidence) are JSON objects carried as Avro strings,
because their shape belongs to the tool, not to the contract.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
)

from agents import __version__, jsontext
from agents.enums import Answer, CompensationPolicy, Decision, TaskKind


def _parse_json_object(value: Any) -> Any:
    if isinstance(value, str | bytes):
        return _parse_json_text(value)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    _check_storable(value)
    return value


def _parse_json_text(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, str):
        _storable(text)  # a raw NUL or lone surrogate anywhere in the text
    value = jsontext.loads(text)
    # Escaped, either can only be in text with a \u escape: text without one needs no walk.
    escaped = text.find(b"\\u") if isinstance(text, bytes) else text.find("\\u")
    if escaped >= 0:
        _check_storable(value)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _check_storable(value: Any) -> None:
    """Refuse a JSON value with a string (or key) that the ledger cannot hold."""
    if isinstance(value, str):
        _storable(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key)
            _check_storable(item)
    elif isinstance(value, list):
        for item in value:
            _check_storable(item)


def _dump_json_object(value: dict[str, Any]) -> str:
    return jsontext.dumps(value, sort_keys=True)


JsonObject = Annotated[
    dict[str, Any],
    BeforeValidator(_parse_json_object),
    PlainSerializer(_dump_json_object, return_type=str),
    Field(json_schema_extra={"avro_json": True}),
]
"""A JSON object in Python, a JSON string on the wire."""


def _parse_optional_json_object(value: Any) -> Any:
    return None if value is None else _parse_json_object(value)


def _dump_optional_json_object(value: dict[str, Any] | None) -> str | None:
    return None if value is None else _dump_json_object(value)


OptionalJsonObject = Annotated[
    dict[str, Any] | None,
    BeforeValidator(_parse_optional_json_object),
    PlainSerializer(_dump_optional_json_object, return_type=str | None),
    Field(json_schema_extra={"avro_json": True}),
]
"""A JSON object or nothing: a JSON string or null on the wire."""


_NUL = "contains a NUL character, which the ledger cannot store"


def _storable(value: str) -> str:
    """``value`` if the ledger (Postgres text and jsonb) can store it: no NUL, valid Unicode."""
    if "\x00" in value:
        raise ValueError(_NUL)
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("contains a lone surrogate, which is not Unicode text") from None
    return value


Text = Annotated[str, AfterValidator(_storable)]
"""Free text: anything but NUL and lone surrogates."""


def as_text(value: str, *, most: int = 4000) -> str:
    """``value`` made fit for a ``Text`` field (NUL and lone surrogates replaced), cut to
    ``most`` characters: for reasons quoting what a record held."""
    clean = value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode()
    return clean if len(clean) <= most else clean[: most - 1] + "\u2026"


ID_MAX_LENGTH: Final = 200
"""The longest id (of an event, goal, task, step, tool, pool, key, escalation or worker): each
is a key of a ledger index."""
ID_ALPHABET: Final = "A-Z a-z 0-9 . _ : - @ + = /"

Id = Annotated[str, Field(max_length=ID_MAX_LENGTH, pattern=r"^[A-Za-z0-9._:@+=/-]*$")]
"""An id: up to ``ID_MAX_LENGTH`` characters of ``ID_ALPHABET``; empty where the field says."""

INT32_MAX: Final = 2**31 - 1
INT64_MAX: Final = 2**63 - 1
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
"""A count or number the ledger keeps in an ``integer`` column."""
Amount = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""A quantity the ledger keeps in a ``bigint`` column (tokens, fencing tokens, offsets)."""

MAX_STEPS_CEILING: Final = 10_000
"""The most steps a goal may ask for."""


def refusal(exc: ValidationError) -> str:
    """What was wrong, in one line naming the field: ``max_steps: Input should be ...``."""
    problem = exc.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "value"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {problem['msg']}{more}"


def now() -> datetime:
    """The current time, timezone-aware, at the microsecond precision Avro keeps."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh unique identifier: a version-7 UUID (RFC 9562) in hex form, 48 bits of Unix
    milliseconds then 74 random bits.

    Time-ordered rather than random (UUID4) because ids are index keys: the inbox's key is the
    event id, and a random key puts every insert on a different page of an index that grows
    with the inbox's retention (a planner batch's inbox insert took three times as long on a
    ledger of five million rows as on an empty one; with ids in time order, half as long)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10))
    return f"{value & _V7_CLEAR | _V7_SET:032x}"


# The version (0111) and variant (10) bits of a UUIDv7, over 128 bits whose random part they
# overwrite.
_V7_CLEAR = ~(0xF << 76 | 0x3 << 62) & ((1 << 128) - 1)
_V7_SET = 0x7 << 76 | 0x2 << 62


class Record(BaseModel):
    """Base of every contract model: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Envelope(Record):
    """What every event says about itself: identity, goal, time, producer, causality."""

    event_id: Id = Field(
        default_factory=new_id, min_length=1, description="unique; used for de-duplication"
    )
    goal_id: Id = Field(description="the goal this event belongs to ('' when none)")
    occurred_at: datetime = Field(default_factory=now)
    producer_agent: Text = Field("client", description="agent role that produced the event")
    producer_version: Text = Field(
        default_factory=lambda: __version__, description="version of the producing agent"
    )
    correlation_id: Id = Field("", description="groups events of one conversation")
    causation_id: Id | None = Field(None, description="event_id of the event that caused this")


class Usage(Record):
    """Tokens and money spent producing an event."""

    input_tokens: Amount = 0
    output_tokens: Amount = 0
    cost_usd: float = Field(0.0, ge=0)

    @property
    def spent(self) -> bool:
        """Anything at all: a goal is charged only for usage that is."""
        return bool(self.input_tokens or self.output_tokens or self.cost_usd)


class Event(Record):
    """Base of the events; subclasses are the types dispatched on."""

    schema_name: ClassVar[str]
    envelope: Envelope

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.schema_name = f"mesh.{cls.__name__}"

    @property
    def goal_id(self) -> str:
        return self.envelope.goal_id

    @property
    def event_id(self) -> str:
        return self.envelope.event_id


class GoalSubmitted(Event):
    """A user's goal enters the mesh."""

    text: Text = Field(description="the goal in the user's words")
    input: JsonObject = Field(default_factory=dict, description="structured input for the tools")
    max_steps: int = Field(
        25, ge=1, le=MAX_STEPS_CEILING, description="most task attempts the goal may use"
    )
    max_tokens: Amount | None = Field(None, description="token ceiling; none for unbounded")
    budget_usd: float | None = Field(
        None, ge=0, description="cost ceiling in USD; none for unbounded"
    )
    deadline_at: datetime | None = Field(None, description="the goal fails if not done by then")
    confidence_threshold: float = Field(0.0, ge=0, le=1, description="verdicts below it escalate")
    submitted_by: Text = "anonymous"
    max_replans: Count = Field(2, description="most new plan versions the goal may use")
    compensation_policy: CompensationPolicy = Field(
        CompensationPolicy.ALL,
        description="on failure undo: all (every completed step) | dependents | none",
    )


class GoalCancelled(Event):
    """A user or operator stops a goal."""

    reason: Text = ""
    requested_by: Text = "anonymous"


class TaskAssigned(Event):
    """The planner hands one attempt of one plan step to the workers of a pool."""

    task_id: Id
    plan_version: Count
    step_id: Id
    tool: Id
    arguments: JsonObject = Field(default_factory=dict)
    attempt: Count = Field(1, ge=1)
    pool: Id = "default"
    kind: TaskKind = Field(TaskKind.ACTION, description="action | compensation")
    timeout_s: float = Field(30.0, gt=0)
    idempotency_key: Id
    feedback: Text | None = Field(None, description="evaluator feedback carried into a retry")
    fence: Amount = Field(
        0,
        description=(
            "the attempt's fencing token: an effect store refuses a token lower than the highest "
            "it has seen for the same key; 0 means unfenced (events from older planners)"
        ),
    )
    undoes: Id | None = Field(
        None, description="for a compensation, the idempotency key of the effect it undoes"
    )


_ARGUMENTS = (
    "the arguments the attempt ran with, as assigned; null from workers older than this field "
    "and from the lease watchdog (the evaluator then reads the ledger's)"
)


class TaskCompleted(Event):
    """A worker finished a task attempt; the result is the tool's typed output."""

    task_id: Id
    step_id: Id
    tool: Id
    attempt: Count = Field(ge=1)
    result: JsonObject = Field(default_factory=dict)
    worker_id: Id
    started_at: datetime
    finished_at: datetime
    usage: Usage = Field(default_factory=Usage)
    arguments: OptionalJsonObject = Field(None, description=_ARGUMENTS)


class TaskFailed(Event):
    """A worker could not finish a task attempt."""

    task_id: Id
    step_id: Id
    tool: Id
    attempt: Count = Field(ge=1)
    category: Text = Field(description="failure category, e.g. transient, permanent, timeout")
    message: Text
    retryable: bool
    worker_id: Id
    started_at: datetime
    finished_at: datetime
    details: JsonObject = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)
    arguments: OptionalJsonObject = Field(None, description=_ARGUMENTS)


class TaskEvaluated(Event):
    """The evaluator's verdict on one task attempt."""

    task_id: Id
    step_id: Id
    attempt: Count = Field(ge=1)
    decision: Decision = Field(description="accept | retry | replan | escalate | fail | compensate")
    confidence: float = Field(ge=0, le=1)
    reason: Text
    feedback: Text | None = None
    usage: Usage = Field(default_factory=Usage)


class GoalCompleted(Event):
    """The goal reached its end successfully."""

    summary: Text
    output: JsonObject = Field(default_factory=dict)
    steps: Count
    usage: Usage = Field(default_factory=Usage)
    duration_s: float = Field(ge=0)


class GoalFailed(Event):
    """The goal ended without success."""

    category: Text
    message: Text
    summary: Text = ""
    steps: Count = 0
    usage: Usage = Field(default_factory=Usage)
    duration_s: float = Field(0.0, ge=0)
    compensated: list[Id] = Field(default_factory=list, description="step ids rolled back")


class EscalationRaised(Event):
    """The goal waits for a human decision."""

    escalation_id: Id
    task_id: Id | None = None
    reason: Text
    evidence: JsonObject = Field(default_factory=dict)
    options: list[Text] = Field(default_factory=list)
    expires_at: datetime | None = None
    default_action: Answer = Answer.ABORT


class EscalationResolved(Event):
    """A human's answer to an escalation."""

    escalation_id: Id
    action: Answer = Field(description="approve | retry | abort | set")
    values: JsonObject = Field(default_factory=dict, description="arguments to set, for 'set'")
    resolved_by: Text = "anonymous"


class Header(Record):
    """One Kafka header of a refused record, kept byte for byte."""

    key: str
    value: bytes | None = None


class DeadLetter(Event):
    """A record the mesh refused, with its original bytes and why."""

    category: Text
    message: Text
    source_topic: Text
    source_partition: Count
    source_offset: Amount
    original_key: bytes | None = None
    original_value: bytes | None = None
    original_headers: list[Header] = Field(default_factory=list)
    agent: Text


EVENT_TYPES: tuple[type[Event], ...] = (
    GoalSubmitted,
    GoalCancelled,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskEvaluated,
    GoalCompleted,
    GoalFailed,
    EscalationRaised,
    EscalationResolved,
    DeadLetter,
)
