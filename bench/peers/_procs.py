"""Subprocess lifecycle and resource accounting shared by the peer lanes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bench.driver import Deadline, LaneTimeout
from bench.model import ProcessUsage
from bench.procs import usage

STOP_GRACE_S = 10.0
KILL_WAIT_S = 5.0
# Workers import bench.* from the checkout, whatever directory the driver was started in.
REPO_ROOT = Path(__file__).resolve().parents[2]


def python_argv(*args: str) -> list[str]:
    """The venv's interpreter, so worker processes import the same packages as the driver."""
    return [sys.executable, *args]


def spawn(argv: Sequence[str], *, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a worker with its output in a log file (a full pipe would stall it)."""
    with log.open("ab") as sink:
        return subprocess.Popen(
            list(argv), env=dict(env), stdout=sink, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid, read from /proc/<pid>/task/<tid>/children."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = [int(p) for p in children.read_text().split()]
                found.extend(kids)
                pending.extend(kids)
    return found


def _reset_peak(pid: int) -> None:
    """Make VmHWM this run's peak rather than start-up's (writing 5 to clear_refs resets it)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


class TreeUsage:
    """CPU and peak RSS of a worker and its children over the measured run only: start-up and
    warm-up are subtracted. Read while they are alive: an exited child's peak is gone."""

    def __init__(self, procs: Sequence[subprocess.Popen[bytes]], name: str) -> None:
        self.name = name
        self.roots = [p.pid for p in procs]
        self.start_cpu: dict[int, float] = {}
        for pid in self._pids():
            _reset_peak(pid)
            with contextlib.suppress(OSError):
                self.start_cpu[pid] = usage(pid, name).cpu_s

    def _pids(self) -> list[int]:
        return [pid for root in self.roots for pid in [root, *descendants(root)]]

    def finish(self) -> list[ProcessUsage]:
        result = []
        for index, pid in enumerate(self._pids()):
            with contextlib.suppress(OSError):
                now = usage(pid, f"{self.name}/{index}")
                now.cpu_s -= self.start_cpu.get(pid, 0.0)
                result.append(now)
        return result


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL for whatever of the tree is left after a grace period.

    Children are listed before the parent is signalled: once it exits they are re-parented
    and can no longer be found from its pid."""
    if proc.poll() is not None:
        return
    kids = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=KILL_WAIT_S)
    for pid in kids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class DriverUsage:
    """The driver's own CPU over the run (not since interpreter start) and its peak RSS."""

    def __init__(self, name: str) -> None:
        self.name = name
        _reset_peak(os.getpid())
        self.start_cpu = usage(os.getpid(), name).cpu_s

    def finish(self) -> ProcessUsage:
        now = usage(os.getpid(), self.name)
        now.cpu_s -= self.start_cpu
        return now


def wait_until(ready: Callable[[], bool], *, deadline: Deadline, what: str) -> None:
    """Poll ready() until it holds, raising with `what` if the deadline passes first."""
    while not ready():
        if deadline.left() <= 0:
            raise LaneTimeout(f"{what} within {deadline.seconds:.0f} s")
        time.sleep(0.1)
