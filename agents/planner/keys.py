"""Idempotency keys and fencing tokens of task attempts.

The key names the *effect* a call makes: the same step with the same effect-defining arguments
gets the same key, so a retry after an attempt whose outcome is unknown converges on the first
call's effect instead of making a second. A call that changes (a human's ``set``, a semantic
retry with the evaluator's feedback, a re-plan with other arguments) gets a new key. Keys begin
with the goal's id, so every effect can be traced to its goal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from agents import jsontext
from agents.tools.base import COMPENSATION_FENCE, action_fence

__all__ = ["COMPENSATION_FENCE", "action_fence", "idempotency_key"]


def idempotency_key(
    goal_id: str, step_id: str, tool: str, arguments: Mapping[str, Any], generation: int
) -> str:
    """The key of a call of ``tool`` with ``arguments`` (resolved) for a step."""
    canonical = jsontext.dumps(
        {"tool": tool, "arguments": dict(arguments), "generation": generation}, sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return f"{goal_id}:{step_id}:{digest}"
