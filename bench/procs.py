"""CPU time and peak memory of processes, read from /proc (Linux)."""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from pathlib import Path

from bench.model import ProcessUsage
from infra.stack import StackConfig, running_pids

_TICKS = os.sysconf("SC_CLK_TCK")


def speed_probe(rounds: int = 3) -> float:
    """Milliseconds a fixed piece of pure Python takes, the best of ``rounds``: how fast this
    machine runs right now (its figures drift by a third and more, sometimes within seconds), so
    figures of runs made at different speeds can be told apart. Larger is slower."""
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        table = {str(n): n * 3 for n in range(50_000)}
        sum(table.values())
        best = min(best, time.perf_counter() - began)
    return best * 1000


def usage(pid: int, name: str, role: str = "lane") -> ProcessUsage:
    """CPU seconds (user + system, children included) and peak RSS of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime are fields 14-17 of the line, 12-15 after the command name.
    cpu = sum(int(x) for x in fields[11:15]) / _TICKS
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return ProcessUsage(name=name, cpu_s=cpu, peak_rss_mb=peak, role=role)


def self_usage(name: str) -> ProcessUsage:
    return usage(os.getpid(), name)


def since(before: list[ProcessUsage], after: list[ProcessUsage]) -> list[ProcessUsage]:
    """CPU spent between two samples of the same processes (start-up and warm-up left out);
    the peak memory is the later sample's."""
    start = {p.name: p.cpu_s for p in before}
    return [
        ProcessUsage(p.name, p.cpu_s - start.get(p.name, 0.0), p.peak_rss_mb, p.role) for p in after
    ]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def infra_usage(pids: dict[str, int]) -> list[ProcessUsage]:
    """The stack's servers (role "infra"), a server's live child processes included (Postgres
    runs a process per connection)."""
    out = []
    for name, pid in pids.items():
        members = [usage(p, name, role="infra") for p in [pid, *_children(pid)] if _alive(p)]
        out.append(
            ProcessUsage(
                name, sum(m.cpu_s for m in members), max(m.peak_rss_mb for m in members), "infra"
            )
        )
    return out


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").exists()


class InfraUsage:
    """The CPU of the stack's servers a lane ``uses`` (of "kafka", "postgres", "redis") over
    its measured run only: creating topics, starting processes and joining consumer groups cost
    the broker far more than a short run's traffic, and belong to no task. A server the lane
    does not use is left out: the broker's own background work (2-7% of a core while Celery
    ran) is not Celery's."""

    def __init__(self, uses: Collection[str]) -> None:
        running = running_pids(StackConfig.from_env())
        self._pids = {name: pid for name, pid in running.items() if name in uses}
        self._before = infra_usage(self._pids)

    def finish(self) -> list[ProcessUsage]:
        return since(self._before, infra_usage(self._pids))
