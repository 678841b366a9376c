"""The targets the benchmark reports against (never asserted): each with what the run measured,
whether it is met, and by how much it is missed."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from bench.model import LaneRun
from bench.report import PEERS, find_run
from bench.stats import percentile, ratio

BENCH_CLIENT = "driver"  # the bench's own process in a mesh lane: not one of the mesh's


@dataclass(frozen=True)
class Target:
    """One target and the run's figure for it."""

    name: str
    measured: float
    goal: float
    unit: str
    at_least: bool  # the figure should be at least the goal (else at most)

    @property
    def met(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured >= self.goal if self.at_least else self.measured <= self.goal

    @property
    def missed_by(self) -> float:
        """How many times better the figure must get to meet the goal (1.0 when met, nan when
        the run did not measure it)."""
        if self.met:
            return 1.0
        if self.at_least:
            return ratio(self.goal, self.measured)
        return ratio(self.measured, self.goal)

    def as_json(self) -> dict[str, object]:
        return {
            "target": self.name,
            "measured": self.measured,
            "goal": self.goal,
            "unit": self.unit,
            "met": self.met,
            "missed_by": self.missed_by,
        }


def targets(runs: list[LaneRun]) -> list[Target]:
    """Every target the run has the figures for: the mesh (M, every goal traced, the default)
    against the issue's absolute goals, and against each peer that ran."""
    found: list[Target] = []
    for shape in ("chain", "fanout"):
        m, r0 = _sat(runs, "M", shape), _sat(runs, "R0", shape)
        found.append(Target(f"M tasks/s, {shape}s", _tps(m), 3000, "tasks/s", at_least=True))
        share = ratio(_tps(m), _tps(r0))
        found.append(Target(f"M/R0 throughput, {shape}s", share, 0.25, "x", at_least=True))
    half = _half(runs, "M")
    for q, goal in ((50, 5.0), (99, 25.0)):
        found.append(Target(f"M overhead p{q} at half load", _ovh(half, q), goal, "ms", False))
    one = find_run(runs, "M", "fanout", single=True)
    fan_p50 = percentile(one.goal_latencies_s, 50) * 1000 if one else math.nan
    found.append(Target("M 20-task fan-out goal p50", fan_p50, 60.0, "ms", at_least=False))
    chain = _sat(runs, "M", "chain")
    found.append(Target("M mesh processes CPU", _mesh_cpu(chain), 500.0, "µs/task", False))
    for peer in PEERS:
        found += _against(runs, peer)
    return found


def _against(runs: list[LaneRun], peer: str) -> list[Target]:
    """Ahead of a peer: throughput on both shapes, overhead at half load, CPU per task over all
    processes (the peers' brokers and stores do part of their work)."""
    if not any(r.lane == peer for r in runs):
        return []
    out = []
    for shape in ("chain", "fanout"):
        m, p = _sat(runs, "M", shape), _sat(runs, peer, shape)
        out.append(_ahead(f"M/{peer} throughput, {shape}s", ratio(_tps(m), _tps(p))))
    m_half, p_half = _half(runs, "M"), _half(runs, peer)
    out.append(
        _ahead(f"{peer}/M overhead p50 at half load", ratio(_ovh(p_half, 50), _ovh(m_half, 50)))
    )
    m, p = _sat(runs, "M", "chain"), _sat(runs, peer, "chain")
    out.append(
        _ahead(f"{peer}/M CPU per chain task, all processes", ratio(_all_cpu(p), _all_cpu(m)))
    )
    return out


def _ahead(name: str, share: float) -> Target:
    """A ratio written so that above 1 means the mesh is ahead."""
    return Target(name, share, 1.0, "x", at_least=True)


def _sat(runs: list[LaneRun], lane: str, shape: str) -> LaneRun | None:
    return find_run(runs, lane, shape, single=False)


def _half(runs: list[LaneRun], lane: str) -> LaneRun | None:
    return next((r for r in runs if r.lane == lane and r.series == "half"), None)


def _of(run: LaneRun | None, figure: Callable[[LaneRun], float]) -> float:
    return figure(run) if run is not None else math.nan


def _tps(run: LaneRun | None) -> float:
    return _of(run, lambda r: r.tasks_per_s)


def _ovh(run: LaneRun | None, q: float) -> float:
    return _of(run, lambda r: percentile(r.task_overheads_s, q) * 1000)


def _mesh_cpu(run: LaneRun | None) -> float:
    """CPU per task of the mesh's own processes (the bench's client left out)."""
    return _of(run, lambda r: r.lane_cpu_us_per_task(leave_out=BENCH_CLIENT))


def _all_cpu(run: LaneRun | None) -> float:
    return _of(run, lambda r: r.lane_cpu_us_per_task() + r.infra_cpu_us_per_task())


def render(found: list[Target]) -> str:
    """The targets as a table: the figure, the goal, and by how much each missed one misses."""
    head = f"{'target':<48}{'measured':>12}{'goal':>10}  {'':<8}{'verdict':<18}"
    lines = [head, "-" * len(head)]
    for t in found:
        sign = "≥" if t.at_least else "≤"
        if math.isnan(t.measured):
            verdict = "not measured"
        elif t.met:
            verdict = "met"
        else:
            verdict = f"missed by {t.missed_by:.2f}x"
        lines.append(
            f"{t.name:<48}{t.measured:>12,.2f}{sign + format(t.goal, ',g'):>10}  {t.unit:<8}"
            f"{verdict:<18}"
        )
    return "\n".join(lines)
