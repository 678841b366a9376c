"""The mesh end to end with separate planner, worker and evaluator processes on the real stack."""

from __future__ import annotations

import uuid
import zlib
from pathlib import Path

import pytest
import redis

from agents import events as ev
from agents.client import MeshClient
from agents.demo import onboarding_input
from agents.history import goal_history
from agents.runtime.settings import MeshSettings
from tests.mesh_support import ledger_rows, running_mesh, steps_input, wait_groups
from tests.support import assert_eventually
from topics.catalogue import spec_for

pytestmark = pytest.mark.integration


def company() -> str:
    return f"Testco {uuid.uuid4().hex[:8]}"


def effects(settings: MeshSettings, name: str, sandbox: Path) -> dict[str, int]:
    """How many times each onboarding side effect exists for the company ``name``."""
    orgs = ledger_rows(
        settings, "select org_id, slug from onboarding_organisations where name = %s", (name,)
    )
    slug = orgs[0][1] if orgs else "-"
    like = (f"%{name}%",)
    return {
        "organisations": len(orgs),
        "billing": ledger_rows(
            settings,
            "select count(*) from onboarding_billing_accounts where org_id = any(%s)",
            ([o[0] for o in orgs],),
        )[0][0],
        "emails": ledger_rows(
            settings, "select count(*) from onboarding_emails where body like %s", like
        )[0][0],
        "channel": ledger_rows(
            settings, "select count(*) from onboarding_channel_messages where text like %s", like
        )[0][0],
        "artefacts": len(list((sandbox / "tenants" / slug).glob("*.json"))),
    }


ONCE = {"organisations": 1, "billing": 1, "emails": 1, "channel": 1, "artefacts": 3}


def test_onboarding_completes_end_to_end_and_the_log_tells_it(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    name = company()
    with running_mesh(mesh_settings, tmp_path) as fleet, MeshClient(mesh_settings) as client:
        handle = client.submit(f"onboard {name}", input=onboarding_input(name, {}))
        final = handle.wait(60)
        assert final.status == "completed", final
        assert {t.step_id for t in final.tasks} == {
            "validate",
            "organisation",
            "infrastructure",
            "billing",
            "email",
            "notify",
        }
        assert all(t.status == "succeeded" and t.attempts == 1 for t in final.tasks)
    assert [m.proc.returncode for m in fleet.members if m.proc] == [0, 0, 0, 0]  # SIGTERM: clean
    assert effects(mesh_settings, name, tmp_path / "sandbox") == ONCE

    history = goal_history(mesh_settings, handle.goal_id)
    kinds = [type(e).__name__ for e in history]
    assert kinds[0] == "GoalSubmitted" and kinds[-1] == "GoalCompleted"
    assert kinds.count("TaskAssigned") == kinds.count("TaskCompleted") == 6
    assert kinds.count("TaskEvaluated") == 6
    position = {e.event_id: i for i, e in enumerate(history)}
    for event in history[1:]:
        cause = event.envelope.causation_id
        assert cause in position and position[cause] < position[event.event_id], event
    ledger_attempts = ledger_rows(
        mesh_settings,
        "select count(*) from attempts a join tasks t using (task_id) where t.goal_id = %s",
        (handle.goal_id,),
    )[0][0]
    assert ledger_attempts == kinds.count("TaskAssigned")  # the log and the ledger agree


def test_independent_tasks_run_in_parallel_on_two_workers(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    """Each worker runs one task at a time, so overlapping tasks ran on different workers."""
    steps = [
        {"id": f"wait_{n}", "tool": "pause", "arguments": {"seconds": 0.3, "label": str(n)}}
        for n in range(12)
    ]
    with (
        running_mesh(mesh_settings, tmp_path, worker_args=("--concurrency", "1")),
        MeshClient(mesh_settings) as client,
    ):
        final = client.submit("fan out", input=steps_input(*steps), max_steps=12).wait(60)
    assert final.status == "completed", final
    rows = ledger_rows(
        mesh_settings,
        "select a.worker_id, a.result from attempts a join tasks t using (task_id) "
        "where t.goal_id = %s",
        (final.goal_id,),
    )
    spans = sorted((r[1]["started_at"], r[1]["finished_at"], r[0]) for r in rows)
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if b[0] < a[1]]
    assert overlapping, spans
    assert all(a[2] != b[2] for a, b in overlapping)  # never two at once on one worker
    assert len({r[0] for r in rows}) == 2


def test_transient_failures_retry_until_the_tool_succeeds(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    name = company()
    simulate = {"configure_billing": {"fail_times": 2}}
    with running_mesh(mesh_settings, tmp_path) as _, MeshClient(mesh_settings) as client:
        final = client.submit(f"onboard {name}", input=onboarding_input(name, simulate)).wait(60)
    assert final.status == "completed", final
    billing = next(t for t in final.tasks if t.step_id == "billing")
    assert billing.attempts == 3
    outcomes = ledger_rows(
        mesh_settings,
        "select a.attempt, a.status, a.category, v.decision from attempts a "
        "join verdicts v using (task_id, attempt) join tasks t using (task_id) "
        "where t.goal_id = %s and t.step_id = 'billing' order by a.attempt",
        (final.goal_id,),
    )
    assert outcomes == [
        (1, "failed", "transient", "retry"),
        (2, "failed", "transient", "retry"),
        (3, "completed", None, "accept"),
    ]
    assert effects(mesh_settings, name, tmp_path / "sandbox") == ONCE


def test_permanent_failure_and_unknown_tool_end_the_goal_with_a_category(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    name = company()
    with running_mesh(mesh_settings, tmp_path) as _, MeshClient(mesh_settings) as client:
        billing_down = client.submit(
            f"onboard {name}",
            input=onboarding_input(name, {"configure_billing": {"permanent": True}}),
        ).wait(60)
        unknown = client.submit(
            "steps",
            input=steps_input({"id": "a", "tool": "echo", "arguments": {"value": 1}}),
        )
        nonsense = client.submit("fly me to the moon")
        assert unknown.wait(60).status == "completed"
        refused = nonsense.wait(60)
    assert billing_down.status == "failed" and billing_down.error_category == "task_failed"
    assert refused.status == "failed" and refused.error_category == "no_playbook"


def test_flushing_redis_mid_run_loses_and_duplicates_nothing(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    names = [company() for _ in range(4)]
    slow = {"provision_infrastructure": {"delay_s": 1.0}}
    with running_mesh(mesh_settings, tmp_path) as _, MeshClient(mesh_settings) as client:
        handles = [client.submit(f"onboard {n}", input=onboarding_input(n, slow)) for n in names]
        running = lambda: any(  # noqa: E731
            t.step_id == "infrastructure" and t.status == "dispatched"
            for t in handles[0].status().tasks
        )
        from tests.support import assert_eventually

        assert_eventually(running, timeout=30, what="infrastructure running")
        redis.Redis.from_url(mesh_settings.redis_url.get_secret_value()).flushdb()
        finals = [h.wait(60) for h in handles]
    assert [f.status for f in finals] == ["completed"] * 4
    for name in names:
        assert effects(mesh_settings, name, tmp_path / "sandbox") == ONCE


OUTCOME_TYPES = ("mesh.TaskCompleted", "mesh.TaskFailed")


def test_a_goal_runs_in_one_trace_across_processes(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    import json

    # The flaky step fails once, so its second attempt is sent by a timer, not by a record.
    steps = steps_input(
        {"id": "a", "tool": "echo"},
        {"id": "b", "tool": "flaky", "arguments": {"fail_times": 1}, "depends_on": ["a"]},
    )
    with running_mesh(mesh_settings, tmp_path) as fleet, MeshClient(mesh_settings) as client:
        goal = client.submit("steps", input=steps).wait(60)
        assert goal.status == "completed"
    del fleet  # stopped: every process flushed its spans to the trace file
    spans = [json.loads(line) for line in (tmp_path / "traces.jsonl").read_text().splitlines()]
    mine = [s for s in spans if s["attributes"].get("mesh.goal_id") == goal.goal_id]
    services = {s["resource"]["attributes"]["service.name"] for s in mine}
    assert {"mesh-planner", "mesh-worker", "mesh-evaluator"} <= services
    assert len({s["context"]["trace_id"] for s in mine}) == 1
    assert "timer retry" in {s["name"] for s in mine}
    tools = [s for s in mine if s["name"] == "tool flaky"]
    assert len(tools) == 2, [s["name"] for s in mine]  # both attempts, the timer's one included
    by_attempt = {s["attributes"]["mesh.attempt"]: s for s in tools}
    assert by_attempt[1]["status"]["status_code"] == "ERROR"
    assert by_attempt[2]["status"]["status_code"] != "ERROR"
    # A tool call's span is its record's consumer span, and the outcome it sent is judged in a
    # child of it; the planner records outcomes without a span of its own.
    outcomes = [s for s in mine if s["attributes"].get("mesh.event.type") in OUTCOME_TYPES]
    tool_spans = {s["context"]["span_id"] for s in mine if s["name"].startswith("tool ")}
    assert outcomes and all(s["parent_id"] in tool_spans for s in outcomes)
    assert {s["resource"]["attributes"]["service.name"] for s in outcomes} == {"mesh-evaluator"}


def test_goals_handed_between_two_planners_and_back_finish_each_step_once(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    """A second planner joins while goals run and leaves again: the goals whose results went to
    it and came back are read from the ledger by whichever planner holds them, and every step
    runs once. Goal ids are chosen so every results partition has one, whichever of them the
    group hands over."""
    steps = [
        {
            "id": f"s{n}",
            "tool": "pause",
            "arguments": {"seconds": 0.4, "label": str(n)},
            "depends_on": [f"s{n - 1}"] if n else [],
        }
        for n in range(20)
    ]
    with (
        running_mesh(mesh_settings, tmp_path) as fleet,
        MeshClient(mesh_settings) as client,
    ):
        handles = [
            client.submit(f"relay {n}", input=steps_input(*steps), max_steps=20, goal_id=goal_id)
            for n, goal_id in enumerate(_one_goal_id_per_results_partition())
        ]
        ids = [h.goal_id for h in handles]
        second = fleet.add("planner-2", "planner")
        second.start()
        wait_groups(mesh_settings, {"planner": 2})
        done = "select count(*) from tasks where goal_id = any(%s) and status = 'succeeded'"
        joined = ledger_rows(mesh_settings, done, (ids,))[0][0]
        assert_eventually(
            lambda: ledger_rows(mesh_settings, done, (ids,))[0][0] >= joined + 2 * len(ids),
            timeout=30,
            what="the goals going on with two planners",
        )
        second.stop()
        finals = [h.wait(90) for h in handles]
    assert [f.status for f in finals] == ["completed"] * len(handles), finals
    attempts = ledger_rows(
        mesh_settings,
        "select t.status, t.attempt, count(a.*) from tasks t join attempts a using (task_id) "
        "where t.goal_id = any(%s) group by t.task_id, t.status, t.attempt",
        (ids,),
    )
    assert len(attempts) == len(steps) * len(handles)
    assert set(attempts) == {("succeeded", 1, 1)}


def _one_goal_id_per_results_partition() -> list[str]:
    """Goal ids whose records land on each partition of the results topic once (librdkafka's
    default partitioner: CRC-32 of the key, modulo the partition count)."""
    partitions = spec_for("results").partitions
    ids: dict[int, str] = {}
    while len(ids) < partitions:
        goal_id = ev.new_id()
        ids.setdefault(zlib.crc32(goal_id.encode()) % partitions, goal_id)
    return list(ids.values())
