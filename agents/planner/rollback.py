"""Rollback, decided purely: which effects to undo, in which order, with which arguments.

Every action step of every plan version the goal ran whose attempts may have taken effect (one
succeeded, or ended unknown) is undone, once per idempotency key it acted under, in reverse
dependency order (the newest plan version first), by a chain of compensation tasks that run one
at a time. Each compensation carries the key it undoes and the highest fencing token, so an
attempt still running cannot act after it, and its tool can undo by key when the step's result
(the ids it made) never arrived. Policies (the goal's ``compensation_policy``):

- ``all``: undo every step that may have taken effect;
- ``dependents``: only the failed step and the steps that depend on it;
- ``none``: undo nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from graphlib import TopologicalSorter
from typing import Any

from agents.enums import CompensationPolicy, TaskKind
from agents.planner.state import Attempt, GoalState, Task
from agents.tools.base import Registry


def to_undo(state: GoalState, registry: Registry) -> list[tuple[Task, str]]:
    """The (step, key) pairs to compensate, first to last."""
    goal = state.goal
    if goal.compensation_policy is CompensationPolicy.NONE:
        return []
    actions = [t for t in state.tasks.values() if t.kind is TaskKind.ACTION]
    chosen = [t for t in actions if t.effects and registry.get(t.tool).compensation]
    if goal.compensation_policy is CompensationPolicy.DEPENDENTS:
        chosen = [t for t in chosen if t.step_id in _failed_and_below(actions, goal)]
    pairs: list[tuple[Task, str]] = []
    for version in sorted({t.plan_version for t in chosen}, reverse=True):
        steps = {t.step_id: t for t in chosen if t.plan_version == version}
        graph = {t.step_id: t.depends_on for t in actions if t.plan_version == version}
        order = list(TopologicalSorter(graph).static_order())
        for step in reversed(order):
            if step in steps:
                pairs += [(steps[step], key) for key in reversed(steps[step].effects)]
    return pairs


def _failed_and_below(actions: Sequence[Task], goal: Any) -> set[str]:
    failed = goal.ending.failed_step if goal.ending is not None else None
    if failed is None:
        return set()
    found = {failed}
    frontier = {failed}
    while frontier:
        nxt = {t.step_id for t in actions if set(t.depends_on) & frontier} - found
        found |= nxt
        frontier = nxt
    return found


def compensations(
    state: GoalState, pairs: Sequence[tuple[Task, str]], registry: Registry
) -> list[Task]:
    """The compensation tasks of ``pairs``, chained: each waits for the one before it."""
    chain: list[Task] = []
    taken: set[str] = {t.step_id for t in state.tasks.values() if t.kind is TaskKind.COMPENSATION}
    previous: str | None = None
    for step, key in pairs:
        name = registry.get(step.tool).compensation
        assert name is not None
        tool = registry.get(name)
        step_id = _free(f"undo_{step.step_id}", taken)
        taken.add(step_id)
        chain.append(
            Task(
                task_id=f"{state.goal.goal_id}.{step.plan_version}.{step_id}",
                goal_id=state.goal.goal_id,
                plan_version=step.plan_version,
                step_id=step_id,
                tool=name,
                arguments=_arguments(list(tool.args.model_fields), step, key),
                depends_on=(previous,) if previous else (),
                pool=tool.pool,
                kind=TaskKind.COMPENSATION,
                key=f"{key}:undo",
                compensates=step.task_id,
                undoes=key,
            )
        )
        previous = step_id
    return chain


def _free(step_id: str, taken: set[str]) -> str:
    """``step_id``, or with a number after it when a compensation already has it (a step that
    acted under several keys is undone once per key)."""
    n = 1
    found = step_id
    while found in taken:
        n += 1
        found = f"{step_id}_{n}"
    return found


def _arguments(fields: Sequence[str], step: Task, key: str) -> dict[str, Any]:
    """The compensating tool's arguments, each taken by name from the original step: its
    result, then what its failure reported (both only when they belong to the effect being
    undone), then the arguments it was called with. What is missing the tool finds by key."""
    current: Attempt | None = step.current
    own = current is not None and current.key == key
    result = step.result if own and step.result is not None else None
    details = current.result if own and current is not None and result is None else None
    called: Mapping[str, Any] = current.arguments if current is not None else step.arguments
    sources = (result or {}, details or {}, called)
    picked: dict[str, Any] = {}
    for name in fields:
        for source in sources:
            if name in source and not _is_ref(source[name]):
                picked[name] = source[name]
                break
    return picked


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"$ref"}
