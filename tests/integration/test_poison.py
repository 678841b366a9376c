"""Hostile records under a running mesh: each ends as a dead letter (with its original bytes) or
as a goal that failed with a category, every agent stays up, and a normal goal completes after
them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from agents import events as ev
from agents.client import MeshClient
from agents.demo import onboarding_input
from agents.runtime.settings import MeshSettings
from schemas.codec import Codec
from tests.integration.test_mesh import ONCE, effects
from tests.kafka_support import produce_raw, produce_raw_headers, read_all
from tests.mesh_support import running_mesh, steps_input
from tests.support import assert_eventually, envelope, unique

pytestmark = pytest.mark.integration
CODEC = Codec()
LONE_SURROGATE = "\ud800"


def unchecked_goal(goal_id: str, **fields: Any) -> bytes:
    """A goal as a producer that skips validation (another language's client) could write."""
    good = ev.GoalSubmitted(envelope=envelope(goal_id), text="onboard acme")
    return CODEC.encode(good.model_copy(update=fields))


def unknown_outcome() -> bytes:
    """A task outcome of a goal and task the ledger never held (forged, or replayed after the
    goal was pruned)."""
    now = ev.now()
    return CODEC.encode(
        ev.TaskCompleted(
            envelope=envelope(unique("goal-")),
            task_id=unique("task-"),
            step_id="s",
            tool="echo",
            attempt=1,
            result={"value": 1},
            worker_id="w-forged",
            started_at=now,
            finished_at=now,
            arguments={"value": 1},
        )
    )


# (topic role, key, value, headers) of each crafted record, and the dead letter it must become.
def crafted() -> dict[str, tuple[str, bytes, bytes, list[tuple[Any, bytes]], str]]:
    long_id = "g" * 4096
    goal = unchecked_goal
    return {
        "max_steps past the ledger's integer": (
            "goals",
            b"p-steps",
            goal("p-steps", max_steps=2**31),
            [],
            "invalid_event",
        ),
        "a NUL in the goal text": (
            "goals",
            b"p-nul-text",
            goal("p-nul-text", text="a\x00b"),
            [],
            "invalid_event",
        ),
        "a NUL in the input": (
            "goals",
            b"p-nul-in",
            goal("p-nul-in", input={"c": "a\x00"}),
            [],
            "invalid_event",
        ),
        "a lone surrogate in the input": (
            "goals",
            b"p-sur",
            goal("p-sur", input={"c": LONE_SURROGATE}),
            [],
            "invalid_event",
        ),
        "a NUL in the event id": (
            "goals",
            b"p-nul-id",
            CODEC.encode(
                ev.GoalSubmitted(envelope=envelope("p-nul-id"), text="t").model_copy(
                    update={
                        "envelope": envelope("p-nul-id").model_copy(update={"event_id": "e\x00"})
                    }
                )
            ),
            [],
            "invalid_event",
        ),
        "a goal id of kilobytes": (
            "goals",
            b"p-long",
            CODEC.encode(
                ev.GoalSubmitted(envelope=envelope("p-long"), text="t").model_copy(
                    update={"envelope": envelope("p-long").model_copy(update={"goal_id": long_id})}
                )
            ),
            [],
            "invalid_event",
        ),
        "a header name that is not UTF-8": (
            "goals",
            b"p-header",
            goal("p-header"),
            [(b"\xff\xfe", b"v")],
            "invalid_event",
        ),
        "an outcome of a task the ledger does not hold": (
            "results",
            b"p-unknown",
            unknown_outcome(),
            [],
            "unknown_task",
        ),
    }


def test_hostile_records_end_and_the_mesh_goes_on(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    records = crafted()
    company = f"After Poison {uuid.uuid4().hex[:8]}"
    with (
        running_mesh(mesh_settings, tmp_path, workers=1) as fleet,
        MeshClient(mesh_settings) as client,
    ):
        for role, key, value, headers, _ in records.values():
            if any(isinstance(name, bytes) for name, _ in headers):
                produce_raw_headers(mesh_settings, role, key, value, headers)
            else:
                produce_raw(mesh_settings, role, [(key, value, headers)])
        # Goals that pass validation and break a later agent: a result larger than any event
        # may be, and a judgement switch that is not a number.
        big = client.submit(
            "echo a lot",
            input=steps_input({"id": "big", "tool": "echo", "arguments": {"value": "x" * 300_000}}),
        )
        odd = client.submit(
            "echo oddly",
            input=steps_input(
                {"id": "odd", "tool": "echo", "arguments": {"value": 1}},
                simulate={"echo": {"confidence": "very"}},
            ),
        )
        assert big.wait(60).status == "failed"
        assert odd.wait(60).status == "failed"
        normal = client.submit(f"onboard {company}", input=onboarding_input(company, {}))
        assert normal.wait(60).status == "completed"

        def letters() -> dict[bytes | None, ev.DeadLetter]:
            found = [CODEC.decode(m.value()) for m in read_all(mesh_settings, "deadletters")]
            return {d.original_key: d for d in found if isinstance(d, ev.DeadLetter)}

        wanted = {key for _, key, _, _, _ in records.values()}
        assert_eventually(lambda: wanted <= set(letters()), timeout=30, what="every dead letter")
        assert [m.name for m in fleet.members if not m.alive()] == []
    found = letters()
    for case, (_, key, value, _, category) in records.items():
        assert (found[key].category, found[key].original_value) == (category, value), case
    assert effects(mesh_settings, company, tmp_path / "sandbox") == ONCE
