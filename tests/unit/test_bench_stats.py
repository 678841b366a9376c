"""The benchmark's statistics on known inputs."""

from __future__ import annotations

import math
import os

import pytest

import bench.procs
from bench.model import LaneRun, ProcessUsage
from bench.report import process_table, ratios, stage_table
from bench.run import FULL, _one, _warm_up, lane_in_flight
from bench.stats import percentile, ratio, summary

pytestmark = pytest.mark.unit


def test_percentiles_interpolate_between_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 50) == 30.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 25) == 20.0
    assert percentile(values, 90) == pytest.approx(46.0)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_order_of_the_sample_does_not_matter() -> None:
    assert summary([5.0, 1.0, 3.0, 2.0, 4.0]) == summary([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary(list(map(float, range(1, 101)))) == {
        "p50": pytest.approx(50.5),
        "p95": pytest.approx(95.05),
        "p99": pytest.approx(99.01),
    }


def test_percentile_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_ratios_refuse_zero_and_nan() -> None:
    assert ratio(3000, 12000) == 0.25
    assert math.isnan(ratio(1, 0))
    assert math.isnan(ratio(math.nan, 2))


def test_ratios_set_each_mesh_lane_against_raw_kafka_and_the_peers() -> None:
    def lane(name: str, tasks_per_s: float, latency_s: float) -> list[LaneRun]:
        saturated = LaneRun(name, "chain", 100, int(tasks_per_s), "in_flight:200", wall_s=1.0)
        single = LaneRun(name, "chain", 3, 18, "single", 1.0, goal_latencies_s=[latency_s] * 3)
        return [saturated, single]

    runs = lane("M", 800, 0.08) + lane("M-1%", 1000, 0.06) + lane("R0", 8000, 0.01)
    runs += lane("celery", 400, 0.02)  # no DBOS run: no DBOS ratios
    chain = ratios(runs)["chain"]
    assert chain["M/R0 throughput"] == pytest.approx(0.1)
    assert chain["M/celery throughput"] == pytest.approx(2.0)
    assert chain["M-1%/celery throughput"] == pytest.approx(2.5)
    assert chain["M/R0 goal latency p50"] == pytest.approx(8.0)
    assert chain["M-1%/celery goal latency p99"] == pytest.approx(3.0)
    assert not any("dbos" in key for key in chain)
    assert "fanout" not in ratios(runs)


def test_lane_throughput_and_cpu_per_task() -> None:
    run = LaneRun(
        lane="M",
        shape="chain",
        goals=10,
        tasks=60,
        load="saturation",
        wall_s=2.0,
        processes=[
            ProcessUsage("planner", cpu_s=0.012, peak_rss_mb=80),
            ProcessUsage("worker", cpu_s=0.018, peak_rss_mb=70),
            ProcessUsage("kafka", cpu_s=5.0, peak_rss_mb=400, role="infra"),
        ],
    )
    assert run.tasks_per_s == 30.0
    assert run.lane_cpu_us_per_task() == pytest.approx(500.0)  # infra excluded
    assert run.as_json()["tasks_per_s"] == 30.0


def test_stage_timers_are_summarised_and_tabled() -> None:
    stages = {"tool": [0.001, 0.002, 0.003, 0.004], "hop": [0.010, 0.010, 0.010, 0.050]}
    run = LaneRun("M", "chain", goals=1, tasks=4, load="single", wall_s=1.0, stages=stages)
    summarised = run.as_json()["stage_summary"]
    assert summarised["tool"]["p50"] == pytest.approx(0.0025)
    assert summarised["hop"]["p99"] == pytest.approx(0.0488)
    (line,) = stage_table([run, LaneRun("R0", "chain", 1, 6, "single", 1.0)]).splitlines()[2:]
    assert line.split()[:3] == ["M", "chain", "single"]
    assert "2.5 / 4.0" in line and "10.0 / 48.8" in line


@pytest.mark.parametrize(
    ("rates", "expected"),
    [([1000, 2000, 2100, 2150], 3), ([500, 510], 2), ([1, 2, 4, 8, 16, 32, 64], 5)],
)
def test_the_warm_up_runs_until_two_runs_in_a_row_agree(rates: list[int], expected: int) -> None:
    made: list[LaneRun] = []

    def lane(**kw: object) -> LaneRun:
        made.append(LaneRun("R0", "chain", 1, rates[len(made)], "in_flight:200", 1.0))
        return made[-1]

    _warm_up(FULL, lane)
    assert len(made) == expected


def test_the_peers_saturate_at_their_own_count_of_goals_in_flight() -> None:
    kafka_lanes = {lane: lane_in_flight(FULL, lane) for lane in ("R0", "R1", "R2", "M", "M-1%")}
    peers = {lane: lane_in_flight(FULL, lane) for lane in ("celery", "dbos")}
    assert set(kafka_lanes.values()) == {FULL.in_flight}
    assert set(peers.values()) == {FULL.peer_in_flight} != {FULL.in_flight}


def test_process_table_gives_each_process_cpu_per_task_lane_first() -> None:
    processes = [
        ProcessUsage("kafka", 0.9, 100.0, "infra"),
        ProcessUsage("worker-1", 0.2, 50.0),
        ProcessUsage("planner", 0.5, 50.0),
    ]
    saturated = LaneRun("M", "chain", 10, 1000, "in_flight:200", 2.0, processes=processes)
    single = LaneRun("M", "chain", 1, 6, "single", 1.0, processes=processes)
    (line,) = process_table([saturated, single]).splitlines()
    assert line.endswith("µs/task: planner 500, worker-1 200, kafka 900")


def test_a_lane_that_breaks_is_reported_and_left_out_of_the_ratios() -> None:
    def broken(**kw: object) -> LaneRun:
        raise TimeoutError("pool exhausted")

    failed = _one("dbos", broken, shape="fanout", goals=150, in_flight=200)
    assert failed.tasks == 0 and "pool exhausted" in failed.notes
    assert failed.load == "in_flight:200"
    mesh = LaneRun("M", "fanout", 150, 3000, "in_flight:200", wall_s=1.0)
    single = LaneRun("M", "fanout", 3, 60, "single", 1.0, goal_latencies_s=[0.04] * 3)
    assert not any("dbos" in key for key in ratios([mesh, single, failed]).get("fanout", {}))


def test_a_lane_is_charged_only_for_the_servers_it_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery uses Redis alone: the broker's and Postgres's CPU while it runs is not its own."""
    me = os.getpid()  # a real process to sample, standing for each server
    monkeypatch.setattr(
        bench.procs, "running_pids", lambda config: {"kafka": me, "postgres": me, "redis": me}
    )
    assert [p.name for p in bench.procs.InfraUsage(uses=("redis",)).finish()] == ["redis"]
    everything = bench.procs.InfraUsage(uses=("kafka", "postgres", "redis")).finish()
    assert sorted(p.name for p in everything) == ["kafka", "postgres", "redis"]
    assert all(p.role == "infra" for p in everything)
