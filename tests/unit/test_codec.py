"""The codec round-trips every event, says why it refuses bytes, and reads older writers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest

from agents import events as ev
from agents.runtime.errors import Category, PoisonRecord
from schemas.codec import MAGIC, Codec, schema_fingerprint
from tests.support import samples

pytestmark = pytest.mark.unit
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "schemas"
HISTORY = Path(__file__).resolve().parents[2] / "schemas" / "history"


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


@pytest.mark.parametrize("event", samples(), ids=lambda e: type(e).__name__)
def test_every_event_round_trips(codec: Codec, event: ev.Event) -> None:
    data = codec.encode(event)
    assert data[:2] == MAGIC
    assert data[2:10] == codec.fingerprint_of(type(event))
    assert codec.decode(data) == event


def test_an_event_encoded_again_gives_its_own_bytes_not_another_events() -> None:
    """Encodings are remembered by identity for events encoded twice; a changed copy, or an
    event made after the memory was cleared, is encoded anew."""
    codec = Codec()
    cancelled = ev.GoalCancelled(envelope=ev.Envelope(goal_id="g", producer_agent="t"))
    first = codec.encode(cancelled)
    assert codec.encode(cancelled) == first
    changed = cancelled.model_copy(update={"reason": "changed"})
    decoded = codec.decode(codec.encode(changed))
    assert isinstance(decoded, ev.GoalCancelled) and decoded.reason == "changed"
    for n in range(3000):  # past the memory's size, while ids of dropped events are reused
        event = cancelled.model_copy(update={"reason": str(n)})
        again = codec.decode(codec.encode(event))
        assert isinstance(again, ev.GoalCancelled) and again.reason == str(n)
    assert codec.encode(cancelled) == first


def test_samples_cover_every_event_type() -> None:
    assert {type(e) for e in samples()} == set(ev.EVENT_TYPES)


@pytest.mark.parametrize(
    ("data", "category"),
    [
        (None, Category.UNDECODABLE),
        (b"", Category.UNDECODABLE),
        (b'{"json": true}', Category.UNDECODABLE),
        (MAGIC + b"\x01" * 8 + b"\x00", Category.UNKNOWN_SCHEMA),
    ],
)
def test_refused_bytes_say_why(codec: Codec, data: bytes | None, category: Category) -> None:
    with pytest.raises(PoisonRecord) as caught:
        codec.decode(data)
    assert caught.value.category == category


def test_truncated_body_is_undecodable(codec: Codec) -> None:
    data = codec.encode(samples()[0])
    with pytest.raises(PoisonRecord) as caught:
        codec.decode(data[:14])
    assert caught.value.category == Category.UNDECODABLE


def test_content_that_breaks_the_model_is_invalid(codec: Codec) -> None:
    # A JSON field that is valid Avro (a string) but not a JSON object.
    bad = samples()[0].model_dump()
    bad["input"] = "[1, 2]"
    schema = fastavro.parse_schema(json.loads(Path("schemas/GoalSubmitted.avsc").read_text()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, bad)
    data = MAGIC + codec.fingerprint_of(ev.GoalSubmitted) + body.getvalue()
    with pytest.raises(PoisonRecord) as caught:
        codec.decode(data)
    assert caught.value.category == Category.INVALID_EVENT


def old_goal_submitted() -> tuple[dict[str, object], bytes]:
    """A GoalSubmitted written by an older schema that lacked the budget fields."""
    schema = json.loads((FIXTURES / "GoalSubmitted.old.avsc").read_text())
    record = {
        "envelope": samples()[0].envelope.model_dump(),
        "text": "onboard Acme",
        "input": '{"company":"Acme"}',
        "max_steps": 7,
    }
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), record)
    return schema, MAGIC + schema_fingerprint(schema) + body.getvalue()


def test_older_writer_is_resolved_against_the_current_reader() -> None:
    schema, data = old_goal_submitted()
    with pytest.raises(PoisonRecord):
        Codec().decode(data)  # an unknown writer until the codec is told about it
    event = Codec(extra_writers=[schema]).decode(data)
    assert isinstance(event, ev.GoalSubmitted)
    assert event.text == "onboard Acme"
    assert event.input == {"company": "Acme"}
    assert event.max_steps == 7
    assert event.budget_usd is None  # filled from the current schema's defaults
    assert event.confidence_threshold == 0.0
    assert event.submitted_by == "anonymous"


def test_an_outcome_from_a_worker_before_carried_arguments_reads_with_none() -> None:
    """A TaskCompleted written by its first schema, which had no ``arguments``: the evaluator
    reads those from the ledger instead."""
    schema = json.loads((HISTORY / "TaskCompleted.v1.avsc").read_text())
    sample = next(e for e in samples() if isinstance(e, ev.TaskCompleted))
    record = sample.model_dump(exclude={"arguments"})
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), record)
    event = Codec().decode(MAGIC + schema_fingerprint(schema) + body.getvalue())
    assert event == sample.model_copy(update={"arguments": None})
