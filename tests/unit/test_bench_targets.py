"""The benchmark's targets and profile summary on known inputs."""

from __future__ import annotations

import math

import pytest

from bench.model import LaneRun, ProcessUsage
from bench.profile import summarise
from bench.targets import Target, render, targets

pytestmark = pytest.mark.unit


def _saturated(lane: str, shape: str, tasks_per_s: float, cpu: dict[str, float]) -> LaneRun:
    """A run of 1,000 tasks at saturation whose processes spent ``cpu`` seconds each."""
    processes = [
        ProcessUsage(name, seconds, 50.0, "infra" if name == "kafka" else "lane")
        for name, seconds in cpu.items()
    ]
    wall = 1000 / tasks_per_s
    return LaneRun(lane, shape, 10, 1000, "in_flight:200", wall, processes=processes)


def _half(lane: str, overheads_ms: list[float]) -> LaneRun:
    return LaneRun(
        lane,
        "chain",
        10,
        60,
        "offered:400/s",
        1.0,
        task_overheads_s=[ms / 1000 for ms in overheads_ms],
        series="half",
    )


def _runs() -> list[LaneRun]:
    mesh_cpu = {"planner": 0.5, "worker-1": 0.25, "evaluator": 0.25, "driver": 0.1, "kafka": 0.4}
    return [
        _saturated("M", "chain", 1000, mesh_cpu),
        _saturated("M", "fanout", 1500, mesh_cpu),
        _saturated("R0", "chain", 8000, {"relay": 0.1}),
        _saturated("R0", "fanout", 4000, {"relay": 0.1}),
        _saturated("celery", "chain", 500, {"worker": 1.5, "kafka": 0.5}),
        _saturated("celery", "fanout", 2000, {"worker": 1.5}),
        _half("M", [2.0, 4.0, 6.0, 8.0, 60.0]),
        _half("celery", [1.0] * 5),
        LaneRun("M", "fanout", 3, 60, "single", 1.0, goal_latencies_s=[0.03, 0.04, 0.05]),
    ]


def _by_name(found: list[Target]) -> dict[str, Target]:
    return {t.name: t for t in found}


def test_absolute_targets_say_whether_met_and_by_how_much_they_are_missed() -> None:
    found = _by_name(targets(_runs()))
    chain = found["M tasks/s, chains"]
    assert chain.measured == pytest.approx(1000)
    assert not chain.met and chain.missed_by == pytest.approx(3.0)
    assert found["M/R0 throughput, chains"].missed_by == pytest.approx(2.0)  # 0.125 of R0
    assert found["M/R0 throughput, fanouts"].met  # 0.375 of R0
    p50 = found["M overhead p50 at half load"]
    assert p50.measured == pytest.approx(6.0) and p50.missed_by == pytest.approx(1.2)
    assert found["M 20-task fan-out goal p50"].measured == pytest.approx(40.0)
    assert found["M 20-task fan-out goal p50"].met
    cpu = found["M mesh processes CPU"]  # the bench's client and the broker are not the mesh's
    assert cpu.measured == pytest.approx(1000.0) and cpu.missed_by == pytest.approx(2.0)


def test_peer_targets_read_above_one_when_the_mesh_is_ahead() -> None:
    found = _by_name(targets(_runs()))
    assert found["M/celery throughput, chains"].measured == pytest.approx(2.0)
    assert found["M/celery throughput, chains"].met
    assert found["M/celery throughput, fanouts"].missed_by == pytest.approx(4 / 3)
    overhead = found["celery/M overhead p50 at half load"]
    assert overhead.measured == pytest.approx(1 / 6) and not overhead.met
    # All processes: the mesh 1,500 µs per task (its broker and client included), Celery 2,000.
    cpu = found["celery/M CPU per chain task, all processes"]
    assert cpu.measured == pytest.approx(2000 / 1500) and cpu.met
    assert not any(name.startswith("M/dbos") for name in found)  # DBOS did not run


def test_a_target_the_run_did_not_measure_is_not_met() -> None:
    found = _by_name(targets([_saturated("M", "chain", 1000, {"planner": 1.0})]))
    unmeasured = found["M overhead p50 at half load"]
    assert math.isnan(unmeasured.measured) and not unmeasured.met
    assert "not measured" in render([unmeasured])
    assert "missed by 3.00x" in render([found["M tasks/s, chains"]])


def test_profile_shares_count_each_function_once_per_stack() -> None:
    raw = "\n".join(
        [
            "main (cli.py:10);loop (app.py:5);handle (sink.py:7) 6",
            "main (cli.py:10);loop (app.py:6);decode (codec.py:3) 2",
            "main (cli.py:10);loop (app.py:5);handle (sink.py:8);handle (sink.py:9) 1",
            "bootstrap (threading.py:1);export (telemetry.py:4) 1",
            "not a sample line",
        ]
    )
    profile = summarise("planner", raw)
    assert profile.samples == 10
    # main and loop start every stack of the busiest thread: left out of the inclusive list.
    assert dict(profile.inclusive) == {
        "handle (sink.py)": pytest.approx(0.7),  # the recursive stack counted once
        "decode (codec.py)": pytest.approx(0.2),
        "bootstrap (threading.py)": pytest.approx(0.1),
        "export (telemetry.py)": pytest.approx(0.1),
    }
    assert dict(profile.own) == {
        "handle (sink.py)": pytest.approx(0.7),
        "decode (codec.py)": pytest.approx(0.2),
        "export (telemetry.py)": pytest.approx(0.1),
    }
    assert profile.own[0][0] == "handle (sink.py)"
    assert summarise("idle", "").samples == 0
