"""What one benchmark lane run measured, in a form every lane (ours and the peers') fills in."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.stats import summary


def load_label(in_flight: int, rate: float | None = None) -> str:
    """How a run's load is named in every lane: one goal in flight, how many, or the offered
    rate in tasks a second."""
    if rate is not None:
        return f"offered:{rate:.0f}/s"
    return "single" if in_flight <= 1 else f"in_flight:{in_flight}"


@dataclass
class ProcessUsage:
    """CPU seconds and peak resident memory of one process over the run."""

    name: str
    cpu_s: float
    peak_rss_mb: float
    role: str = "lane"  # lane | infra (broker, database, cache: reported separately)


@dataclass
class LaneRun:
    """One run of one lane at one load."""

    lane: str  # R0, R1, R2, M, celery, dbos
    shape: str  # chain | fanout
    goals: int
    tasks: int
    load: str  # load_label(): "single", "in_flight:<goals>" or "offered:<tasks>/s"
    wall_s: float
    goal_latencies_s: list[float] = field(default_factory=list)
    task_overheads_s: list[float] = field(default_factory=list)  # dispatch → verdict, tool excluded
    # Per-stage timers of each task, where the lane has them (the mesh's, from its ledger).
    stages: dict[str, list[float]] = field(default_factory=dict)
    processes: list[ProcessUsage] = field(default_factory=list)
    end_lag: int = 0  # records the lane's consumer groups left uncommitted (Kafka lanes; else 0)
    durability: str = ""  # what survives a crash, in a few words
    notes: str = ""
    series: str = "main"  # main | workers (scaling) | goals (goal count) | offered | half (rates)
    probe_ms: float = 0.0  # the machine's speed before the run (``speed_probe``; larger: slower)

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.wall_s if self.wall_s > 0 else 0.0

    def lane_cpu_us_per_task(self, leave_out: str = "") -> float:
        """CPU per task of the lane's own processes, the one named ``leave_out`` left out."""
        cpu = sum(p.cpu_s for p in self.processes if p.role == "lane" and p.name != leave_out)
        return cpu / self.tasks * 1e6 if self.tasks else 0.0

    def infra_cpu_us_per_task(self) -> float:
        """Broker, database and cache CPU during the run (start-up of the lane included)."""
        cpu = sum(p.cpu_s for p in self.processes if p.role == "infra")
        return cpu / self.tasks * 1e6 if self.tasks else 0.0

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tasks_per_s"] = self.tasks_per_s
        data["lane_cpu_us_per_task"] = self.lane_cpu_us_per_task()
        data["infra_cpu_us_per_task"] = self.infra_cpu_us_per_task()
        data["stage_summary"] = {name: summary(v) for name, v in self.stages.items()}
        return data
