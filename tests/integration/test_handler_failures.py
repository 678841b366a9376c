"""Every failure of a handler ends somewhere, on the real broker: a record's own transient
failure is retried a bounded number of times, an outage is waited out however long it lasts, and
a record given up on is dead-lettered and reported to whoever waits for its outcome."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from agents import events as ev
from agents.runtime.consumer import (
    Backoff,
    ConsumerRuntime,
    Delivery,
    Failure,
    Handler,
    HandlerSink,
)
from agents.runtime.errors import TransientError
from agents.runtime.publisher import Publisher
from agents.runtime.settings import MeshSettings
from schemas.codec import Codec
from tests.kafka_support import produce_raw, produce_raw_headers, read_all
from tests.support import assert_eventually, envelope, samples, unique

pytestmark = pytest.mark.integration
CODEC = Codec()
TRIES = 3


@pytest.fixture
def publisher(mesh_settings: MeshSettings) -> Iterator[Publisher]:
    pub = Publisher(settings=mesh_settings, codec=CODEC, client_id="test-publisher")
    yield pub
    pub.close()


def consumer(
    settings: MeshSettings,
    publisher: Publisher,
    handle: Handler,
    on_failure: Failure | None = None,
) -> ConsumerRuntime:
    return ConsumerRuntime(
        settings=settings,
        codec=CODEC,
        publisher=publisher,
        group_id=unique("g-"),
        roles=("goals",),
        sink=HandlerSink({ev.GoalCancelled: handle}, on_failure=on_failure),
        client_id="test-consumer",
        backoff=Backoff(initial_s=0.01, max_s=0.02, max_attempts=TRIES),
    )


def report(event: ev.GoalCancelled, category: str, reason: str) -> list[ev.Event]:
    """Stands for a worker's TaskFailed: an event on another topic, for the failed goal."""
    verdict = next(e for e in samples(f"{event.goal_id}-failed") if isinstance(e, ev.TaskEvaluated))
    return [verdict.model_copy(update={"reason": f"{category}: {reason}"})]


def run_until(runtime: ConsumerRuntime, done: object) -> None:
    assert callable(done)
    try:
        assert_eventually(lambda: runtime.poll_batch(0.2) >= 0 and done(), timeout=30)
    finally:
        runtime.close()


def letters(settings: MeshSettings) -> list[ev.DeadLetter]:
    found = [CODEC.decode(m.value()) for m in read_all(settings, "deadletters")]
    return [f for f in found if isinstance(f, ev.DeadLetter)]


def reports(settings: MeshSettings) -> list[str]:
    """The goal ids of the reports sent (on the results topic)."""
    return [CODEC.decode(m.value()).goal_id for m in read_all(settings, "results")]


def test_a_transient_failure_that_persists_is_given_up_on_and_reported(
    mesh_settings: MeshSettings, publisher: Publisher
) -> None:
    publisher.publish(ev.GoalCancelled(envelope=envelope("goal-stuck")))
    publisher.flush()
    tries: list[int] = []

    def never(event: ev.Event, delivery: Delivery) -> list[ev.Event]:
        tries.append(delivery.offset)
        raise TransientError("this record's lock is never free")

    run_until(
        consumer(mesh_settings, publisher, never, report),
        lambda: len(letters(mesh_settings)) == 1,
    )
    assert len(tries) == TRIES
    (letter,) = letters(mesh_settings)
    assert letter.category == "retries_exhausted"
    assert f"after {TRIES} tries" in letter.message
    assert reports(mesh_settings) == ["goal-stuck-failed"]


def test_an_outage_is_waited_out_past_the_bound_on_a_records_own_retries(
    mesh_settings: MeshSettings, publisher: Publisher
) -> None:
    publisher.publish(ev.GoalCancelled(envelope=envelope("goal-waits")))
    publisher.flush()
    tries: list[int] = []
    handled: list[str] = []

    def redis_away_for_a_while(event: ev.Event, delivery: Delivery) -> list[ev.Event]:
        tries.append(delivery.offset)
        if len(tries) <= TRIES * 3:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:16379")
        handled.append(event.goal_id)
        return []

    run_until(consumer(mesh_settings, publisher, redis_away_for_a_while, report), lambda: handled)
    assert handled == ["goal-waits"]
    assert len(tries) == TRIES * 3 + 1
    assert letters(mesh_settings) == []
    assert reports(mesh_settings) == []


def test_a_handler_bug_is_dead_lettered_and_reported_and_the_next_record_handled(
    mesh_settings: MeshSettings, publisher: Publisher
) -> None:
    for goal in ("goal-bug", "goal-fine"):
        publisher.publish(ev.GoalCancelled(envelope=envelope(goal), reason=goal))
    publisher.flush()
    handled: list[str] = []

    def buggy(event: ev.Event, delivery: Delivery) -> list[ev.Event]:
        assert isinstance(event, ev.GoalCancelled)
        if event.reason == "goal-bug":
            raise KeyError("confidence")
        handled.append(event.goal_id)
        return []

    run_until(
        consumer(mesh_settings, publisher, buggy, report),
        lambda: handled and letters(mesh_settings),
    )
    assert handled == ["goal-fine"]
    (letter,) = letters(mesh_settings)
    assert (letter.category, letter.message) == ("handler_error", "KeyError: 'confidence'")
    assert reports(mesh_settings) == ["goal-bug-failed"]


def test_a_record_whose_header_name_is_not_utf8_is_dead_lettered_whole(
    mesh_settings: MeshSettings, publisher: Publisher
) -> None:
    """A Java or Go producer can write such a name; the client cannot read any of the record's
    headers, so the record goes to dead letters with its key and value, and the batch goes on."""
    bad = CODEC.encode(ev.GoalCancelled(envelope=envelope("goal-header")))
    good = CODEC.encode(ev.GoalCancelled(envelope=envelope("goal-next")))
    produce_raw_headers(mesh_settings, "goals", b"k-bad", bad, [(b"\xff\xfe-name", b"v")])
    produce_raw(mesh_settings, "goals", [(b"k-good", good, [("origin", b"test")])])
    handled: list[str] = []

    def keep(event: ev.Event, delivery: Delivery) -> list[ev.Event]:
        handled.append(event.goal_id)
        return []

    run_until(consumer(mesh_settings, publisher, keep), lambda: handled and letters(mesh_settings))
    assert handled == ["goal-next"]
    (letter,) = letters(mesh_settings)
    assert letter.category == "invalid_event"
    assert "not UTF-8" in letter.message
    assert (letter.original_key, letter.original_value) == (b"k-bad", bad)
