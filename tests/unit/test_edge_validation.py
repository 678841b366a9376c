"""The contract refuses at the edge what the ledger or the runtime cannot hold: a client gets a
validation error naming the field, and a record that reaches a topic anyway is refused by the
codec as an invalid event (for the consumer to dead-letter with its original bytes)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agents import events as ev
from agents.runtime.errors import Category, PoisonRecord
from schemas.codec import Codec
from tests.support import envelope

pytestmark = pytest.mark.unit

LONE_SURROGATE = "\ud800"


def goal(**fields: Any) -> ev.GoalSubmitted:
    return ev.GoalSubmitted(envelope=envelope(), **({"text": "onboard acme"} | fields))


def unchecked_goal(**fields: Any) -> ev.GoalSubmitted:
    """A goal as a producer that skips validation (another language's client) could write."""
    return goal().model_copy(update=fields)


POISON: dict[str, dict[str, Any]] = {
    "max_steps past the ledger's integer": {"max_steps": 2**31},
    "max_steps past the ceiling": {"max_steps": ev.MAX_STEPS_CEILING + 1},
    "max_steps of zero": {"max_steps": 0},
    "a NUL in the text": {"text": "onboard\x00acme"},
    "a lone surrogate in the text": {"text": f"onboard {LONE_SURROGATE}"},
    "a NUL in the input": {"input": {"company": "a\x00b"}},
    "a NUL in an input key": {"input": {"a\x00": 1}},
    "a lone surrogate deep in the input": {"input": {"people": [{"name": LONE_SURROGATE}]}},
    "tokens past bigint": {"max_tokens": 2**63},
    "a negative budget": {"budget_usd": -1.0},
    "a budget that is not a number": {"budget_usd": float("nan")},
    "a confidence threshold above one": {"confidence_threshold": 1.5},
}


@pytest.mark.parametrize("fields", POISON.values(), ids=list(POISON))
def test_a_client_is_refused_naming_the_field(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as refused:
        goal(**fields)
    (name,) = fields
    assert refused.value.errors()[0]["loc"][0] == name


@pytest.mark.parametrize(
    "envelope_fields",
    [
        {"event_id": "e\x00"},
        {"event_id": ""},
        {"goal_id": "g" * (ev.ID_MAX_LENGTH + 1)},
        {"goal_id": "a goal"},
        {"causation_id": "id;drop"},
        {"producer_agent": "x\x00"},
    ],
    ids=[
        "nul-event-id",
        "empty-event-id",
        "long-goal-id",
        "space-in-id",
        "semicolon",
        "nul-producer",
    ],
)
def test_ids_are_bounded_and_of_a_documented_alphabet(envelope_fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ev.Envelope(**({"goal_id": "g"} | envelope_fields))


def test_ids_the_mesh_makes_pass() -> None:
    ids = ["", "01a252e6049e733f9be3ba76010fa2e3", "g.1.undo_billing:undo", "g:step:0a1b", "a/b"]
    for value in ids:
        assert ev.Envelope(goal_id=value).goal_id == value


def test_paired_surrogates_and_other_text_pass() -> None:
    text = "onboard Åcme \U0001f600 \\u0000 as written"
    assert goal(text=text, input={"emoji": "\U0001f600", "escaped": "\\ud800"}).text == text


@pytest.mark.parametrize(
    "fields",
    [
        {"max_steps": 2**31},
        {"text": "a\x00b"},
        {"input": {"company": "a\x00b"}},
    ],
    ids=["max_steps", "nul-text", "nul-input"],
)
def test_a_record_written_past_the_models_is_an_invalid_event(fields: dict[str, Any]) -> None:
    codec = Codec()
    data = codec.encode(unchecked_goal(**fields))
    with pytest.raises(PoisonRecord) as refused:
        codec.decode(data)
    assert refused.value.category == Category.INVALID_EVENT


@pytest.mark.parametrize(
    "text",
    ['{"a": "\\u0000"}', '{"a": "\\ud800"}', '{"\\ud800": 1}', '{"a": NaN, "b": "\\udc00"}'],
    ids=["nul", "lone-high", "lone-key", "fallback-reader"],
)
def test_json_text_on_the_wire_with_what_the_ledger_refuses_is_invalid(text: str) -> None:
    with pytest.raises(ValidationError):
        ev.GoalSubmitted.model_validate({"envelope": envelope(), "text": "t", "input": text})


def test_a_result_with_a_nul_cannot_be_reported_as_completed() -> None:
    with pytest.raises(ValidationError):
        ev.TaskCompleted(
            envelope=envelope(),
            task_id="t",
            step_id="s",
            tool="echo",
            attempt=1,
            result={"value": "a\x00b"},
            worker_id="w",
            started_at=ev.now(),
            finished_at=ev.now(),
        )


def test_an_escaped_backslash_before_u0000_is_text_not_a_nul() -> None:
    submitted = ev.GoalSubmitted.model_validate(
        {"envelope": envelope(), "text": "t", "input": '{"path": "C:\\\\u0000"}'}
    )
    assert submitted.input == {"path": "C:\\u0000"}
