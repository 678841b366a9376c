"""Saga compensation, decided purely: which completed steps to undo, in which order, with which
arguments. The planner turns the answer into a chain of compensation tasks, run one at a time in
reverse dependency order, each exactly once (its idempotency key is the step's, suffixed).

Policies (the goal's ``compensation_policy``):

- ``all``: undo every completed step (and what a partially failed step managed to do);
- ``dependents``: undo only what was built on the failed step: its partial effects and any
  completed step that depends on it;
- ``none``: undo nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from graphlib import TopologicalSorter
from typing import Any

from agents.planner.decide import TaskRow
from agents.tools.base import Registry

POLICIES = ("all", "dependents", "none")


def to_undo(
    tasks: Sequence[TaskRow],
    *,
    policy: str,
    registry: Registry,
    failed: TaskRow | None = None,
    failed_partially: bool = False,
) -> list[TaskRow]:
    """The steps to compensate, first to last (reverse dependency order)."""
    if policy == "none":
        return []
    chosen = [t for t in tasks if t.status == "succeeded"]
    if policy == "dependents":
        below = _descendants(tasks, failed.step_id) if failed is not None else set()
        chosen = [t for t in chosen if t.step_id in below]
    if failed is not None and failed_partially:
        chosen.append(failed)
    undoable = {t.step_id: t for t in chosen if registry.get(t.tool).compensation}
    order = list(TopologicalSorter({t.step_id: t.depends_on for t in tasks}).static_order())
    return [undoable[step] for step in reversed(order) if step in undoable]


def _descendants(tasks: Sequence[TaskRow], step_id: str) -> set[str]:
    found: set[str] = set()
    frontier = {step_id}
    while frontier:
        nxt = {t.step_id for t in tasks if set(t.depends_on) & frontier} - found
        found |= nxt
        frontier = nxt
    return found


def compensation_arguments(
    fields: Sequence[str],
    *,
    arguments: Mapping[str, Any],
    result: Mapping[str, Any] | None,
    details: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The compensating tool's arguments, each taken by name from the original step: its result
    first, then what its failure reported, then the arguments it was called with."""
    sources = (result or {}, details or {}, arguments)
    picked: dict[str, Any] = {}
    for name in fields:
        for source in sources:
            if name in source:
                picked[name] = source[name]
                break
    return picked
