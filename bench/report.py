"""The benchmark's table, ratios and plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.model import LaneRun
from bench.stats import percentile, ratio

_HEAD = (
    f"{'lane':<7}{'shape':<7}{'load':<13}{'goals':>6}{'tasks/s':>9}{'ovh p50':>9}{'p95':>8}"
    f"{'p99':>8}{'goal p50':>10}{'cpu µs/t':>10}{'infra':>8}{'rss MB':>8}{'lag':>6}"
)


def table(runs: list[LaneRun]) -> str:
    """One line per run; latencies in milliseconds."""
    lines = [_HEAD, "-" * len(_HEAD)]
    for r in runs:
        o = r.task_overheads_s
        peak = max((p.peak_rss_mb for p in r.processes if p.role == "lane"), default=0.0)
        lines.append(
            f"{r.lane:<7}{r.shape:<7}{r.load:<13}{r.goals:>6}{r.tasks_per_s:>9.0f}"
            f"{_ms(percentile(o, 50)):>9}{_ms(percentile(o, 95)):>8}{_ms(percentile(o, 99)):>8}"
            f"{_ms(percentile(r.goal_latencies_s, 50)):>10}"
            f"{r.lane_cpu_us_per_task():>10.0f}{r.infra_cpu_us_per_task():>8.0f}{peak:>8.0f}"
            f"{r.end_lag:>6}"
        )
    return "\n".join(lines)


def stage_table(runs: list[LaneRun]) -> str:
    """Where a task's time goes, per run that has per-stage timers: p50 / p99 of each stage."""
    timed = [r for r in runs if r.stages]
    if not timed:
        return ""
    names = list(timed[0].stages)
    head = f"{'lane':<7}{'shape':<7}{'load':<13}" + "".join(f"{n + ' p50/p99':>26}" for n in names)
    lines = [head, "-" * len(head)]
    for r in timed:
        cells = (_p50_p99(r.stages.get(n, [])) for n in names)
        lines.append(f"{r.lane:<7}{r.shape:<7}{r.load:<13}" + "".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)


def process_table(runs: list[LaneRun]) -> str:
    """CPU per task of every process in the runs at saturation, in µs (the lane's own processes
    first, then the broker, database and cache), so the report says which process to profile."""
    lines = []
    for r in (r for r in runs if saturation(r) and r.tasks):
        ordered = sorted(r.processes, key=lambda p: (p.role != "lane", -p.cpu_s))
        cells = ", ".join(f"{p.name} {p.cpu_s / r.tasks * 1e6:,.0f}" for p in ordered)
        lines.append(f"{r.lane:<7}{r.shape:<7}µs/task: {cells}")
    return "\n".join(lines)


def _p50_p99(values: list[float]) -> str:
    return f"{_ms(percentile(values, 50))} / {_ms(percentile(values, 99))}"


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def find_run(runs: list[LaneRun], lane: str, shape: str, single: bool) -> LaneRun | None:
    """The lane's run at one goal in flight (``single``) or at saturation; not a failed one."""
    for r in runs:
        if (
            r.tasks > 0
            and r.lane == lane
            and r.shape == shape
            and (r.load == "single" if single else saturation(r))
        ):
            return r
    return None


def saturation(run: LaneRun) -> bool:
    """A run of the main series at saturation (not offered a rate, not a scaling run)."""
    return run.series == "main" and run.load != "single"


MESH_LANES = ("M", "M-1%")  # every goal traced, and 1% of goals (the peers trace nothing)
PEERS = ("celery", "dbos")  # the peer orchestrators the mesh is measured against


def ratios(runs: list[LaneRun]) -> dict[str, Any]:
    """The mesh's lanes against R0 and the peers, per shape: throughput at saturation, goal
    latency at one in flight."""
    out: dict[str, Any] = {}
    for shape in ("chain", "fanout"):
        row: dict[str, float] = {}
        for mesh in MESH_LANES:
            row |= _ratios_of(runs, mesh, shape)
        if row:
            out[shape] = row
    return out


def _ratios_of(runs: list[LaneRun], mesh: str, shape: str) -> dict[str, float]:
    m_sat, m_one = find_run(runs, mesh, shape, False), find_run(runs, mesh, shape, True)
    if m_sat is None or m_one is None:
        return {}
    row: dict[str, float] = {}
    for other in ("R0", *PEERS):
        sat, one = find_run(runs, other, shape, False), find_run(runs, other, shape, True)
        if sat is not None:
            row[f"{mesh}/{other} throughput"] = ratio(m_sat.tasks_per_s, sat.tasks_per_s)
        if one is not None:
            for q in (50, 99):
                row[f"{mesh}/{other} goal latency p{q}"] = ratio(
                    percentile(m_one.goal_latencies_s, q), percentile(one.goal_latencies_s, q)
                )
    return row


def render_png(runs: list[LaneRun], path: Path) -> None:
    """Tasks per second at saturation per lane and shape (bar chart)."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("bench: matplotlib is not installed (pip install .[bench]); no plot")
        return
    saturated = [r for r in runs if saturation(r)]
    labels = [f"{r.lane}\n{r.shape}" for r in saturated]
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 0.9), 4))
    ax.bar(labels, [r.tasks_per_s for r in saturated], color="#4c72b0")
    ax.set_yscale("log")  # the raw ceiling is orders of magnitude above the rest
    ax.set_ylabel("tasks/s at saturation (log scale)")
    ax.set_title("agent mesh (M) against raw Kafka (R0) and peers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
