"""Starting, stopping and killing agent processes: used by ``mesh demo`` and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO


@dataclass
class AgentProcess:
    """One ``mesh run ...`` process, its log in a file of its own."""

    name: str
    args: Sequence[str]
    env: Mapping[str, str]
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "--log-level", "INFO", "run", *self.args],
            env=dict(self.env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM), once: a second signal would cut its clean shutdown short."""
        if self.alive() and self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0, *, signalled: bool = False) -> int | None:
        """SIGTERM, then SIGKILL if it does not leave in time; returns the exit code."""
        if self.proc is None:
            return None
        if not signalled:
            self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no clean-up, as a crash would leave things."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Fleet:
    """A set of agent processes started and stopped together."""

    def __init__(self, *, env: Mapping[str, str] | None = None, log_dir: Path) -> None:
        self._env = dict(os.environ if env is None else env)
        self._log_dir = log_dir
        self.members: list[AgentProcess] = []

    def add(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> AgentProcess:
        """One more process running ``mesh run *args``; ``env`` adds to the fleet's own."""
        member = AgentProcess(name, args, self._env | dict(env or {}), self._log_dir)
        self.members.append(member)
        return member

    def start(self) -> Fleet:
        for member in self.members:
            member.start()
        return self

    def stop(self) -> None:
        for member in self.members:
            member.terminate()
        deadline = time.monotonic() + 15
        for member in self.members:
            member.stop(timeout=max(0.1, deadline - time.monotonic()), signalled=True)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
