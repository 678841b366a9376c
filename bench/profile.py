"""A sampling profile (py-spy) of a lane's hottest process, summarised as the functions it spent
its time in: where a target is missed, this is what says why."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RATE_HZ = 100  # samples a second: enough for a few seconds' run, little load on a busy core
MOST = 25  # functions kept per list


@dataclass(frozen=True)
class Profile:
    """Where one process spent its samples."""

    process: str
    samples: int
    inclusive: list[tuple[str, float]]  # function, share of samples with it on the stack
    own: list[tuple[str, float]]  # function, share of samples it was running itself

    def render(self, most: int = 15) -> str:
        lines = [f"profile of {self.process} ({self.samples} samples): share of samples"]
        lines += ["  on the stack:"] + [f"  {s:6.1%}  {f}" for f, s in self.inclusive[:most]]
        lines += ["  running itself:"] + [f"  {s:6.1%}  {f}" for f, s in self.own[:most]]
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        return {
            "process": self.process,
            "samples": self.samples,
            "inclusive": self.inclusive,
            "own": self.own,
        }


def summarise(process: str, raw: str, most: int = MOST) -> Profile:
    """py-spy's raw output (one line per distinct stack: ``frame;frame;... count``, outermost
    first, each frame ``function (file:line)``) as shares per function; lines of one function
    count together, and a function on a stack twice (recursion) counts once. The trunk (the
    frames every stack of the busiest thread starts with: the entry point down to where the work
    branches) is left out of the inclusive list, since it is on nearly every sample."""
    stacks = list(_stacks(raw))
    total = sum(n for _, n in stacks)
    if not total:
        return Profile(process, 0, [], [])
    trunk = _trunk(stacks)
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in stacks:
        for function in set(frames) - trunk:
            inclusive[function] += n
        own[frames[-1]] += n
    return Profile(process, total, _shares(inclusive, total, most), _shares(own, total, most))


def _stacks(raw: str) -> Iterator[tuple[list[str], int]]:
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            yield [_function(frame) for frame in stack.split(";")], int(count)


def _trunk(stacks: list[tuple[list[str], int]]) -> set[str]:
    roots: Counter[str] = Counter()
    for frames, n in stacks:
        roots[frames[0]] += n
    busiest = [frames for frames, _ in stacks if frames[0] == roots.most_common(1)[0][0]]
    trunk: set[str] = set()
    for depth in range(min(len(frames) for frames in busiest) - 1):  # the leaf is work, kept
        at = {frames[depth] for frames in busiest}
        if len(at) > 1:
            break
        trunk |= at
    return trunk


def _function(frame: str) -> str:
    """``function (file:line)`` without the line."""
    name, paren, where = frame.partition(" (")
    if not paren:
        return frame
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})"


def _shares(counts: Counter[str], total: int, most: int) -> list[tuple[str, float]]:
    return [(function, n / total) for function, n in counts.most_common(most)]


@contextmanager
def sampling(pid: int, raw: Path) -> Iterator[None]:
    """py-spy samples ``pid`` while the block runs and writes its raw stacks to ``raw``; when
    py-spy is missing or may not attach (it needs ptrace), ``raw`` is not written and a line on
    stderr says so."""
    spy = shutil.which("py-spy") or _beside_python("py-spy")
    if spy is None:
        print("bench: py-spy is not installed (pip install .[bench]); no profile", file=sys.stderr)
        yield
        return
    raw.unlink(missing_ok=True)
    argv = [spy, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--nonblocking"]
    argv += ["--format", "raw", "--output", str(raw)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not raw.is_file():
            reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            print(f"bench: py-spy recorded nothing: {reason[0]}", file=sys.stderr)


def _beside_python(name: str) -> str | None:
    """A console script installed next to this interpreter (a venv not on PATH)."""
    found = Path(sys.executable).with_name(name)
    return str(found) if found.is_file() else None
