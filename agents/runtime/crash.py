"""Crash points: places where a process can be made to die with SIGKILL, for fault tests.

``MESH_CRASH_AT=<point>`` arms one point; the process kills itself the N-th time it passes it
(``MESH_CRASH_AFTER``, default 1). Unset, a crash point costs one dictionary lookup.

Points: ``worker.after_effect`` (a tool's side effect done, its result not yet published),
``ledger.after_commit`` (a ledger transaction committed, its outbox not yet relayed),
``consumer.after_publish`` (emitted events acknowledged, the consumed offsets not yet stored).
"""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_passed: dict[str, int] = {}


def crashpoint(name: str) -> None:
    if os.environ.get("MESH_CRASH_AT") != name:
        return
    with _lock:
        _passed[name] = _passed.get(name, 0) + 1
        if _passed[name] >= int(os.environ.get("MESH_CRASH_AFTER", "1")):
            os.kill(os.getpid(), signal.SIGKILL)
