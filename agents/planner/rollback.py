"""Rollback, decided purely: which effects to undo, in which order, with which arguments.

Every action step of every plan version the goal ran whose attempts may have taken effect (one
succeeded, or ended unknown) is undone, once per idempotency key it acted under, in reverse
dependency order (the newest plan version first), by a chain of compensation tasks that run one
at a time. Each compensation carries the key it undoes and the highest fencing token, so an
attempt still running cannot act after it, and its tool can undo by key when the step's result
(the ids it made) never arrived. A key is undone once, even when two plan versions acted under
it. Policies (the goal's ``compensation_policy``):

- ``all``: undo every step that may have taken effect;
- ``dependents``: only the failed step and the steps that depend on it;
- ``none``: undo nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from graphlib import TopologicalSorter
from typing import Any

from agents.enums import CompensationPolicy, TaskKind, TaskStatus
from agents.planner.state import Effect, Goal, GoalState, Task
from agents.tools.base import Registry


def to_undo(state: GoalState, registry: Registry) -> list[tuple[Task, Effect]]:
    """The (step, effect) pairs to compensate, first to last."""
    goal = state.goal
    if goal.compensation_policy is CompensationPolicy.NONE:
        return []
    actions = [t for t in state.tasks.values() if t.kind is TaskKind.ACTION]
    chosen = [t for t in actions if t.effects and registry.get(t.tool).compensation]
    if goal.compensation_policy is CompensationPolicy.DEPENDENTS:
        chosen = [t for t in chosen if t.step_id in _failed_and_below(actions, goal)]
    pairs: list[tuple[Task, Effect]] = []
    seen: set[str] = set()
    for version in sorted({t.plan_version for t in chosen}, reverse=True):
        steps = {t.step_id: t for t in chosen if t.plan_version == version}
        graph = {t.step_id: t.depends_on for t in actions if t.plan_version == version}
        for step in reversed(list(TopologicalSorter(graph).static_order())):
            for effect in reversed(steps[step].effects if step in steps else ()):
                if effect.key not in seen:
                    seen.add(effect.key)
                    pairs.append((steps[step], effect))
    return pairs


def _failed_and_below(actions: Sequence[Task], goal: Goal) -> set[str]:
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
    state: GoalState, pairs: Sequence[tuple[Task, Effect]], registry: Registry
) -> list[Task]:
    """The compensation tasks of ``pairs``, chained: each waits for the one before it."""
    chain: list[Task] = []
    taken = {t.step_id for t in state.tasks.values() if t.kind is TaskKind.COMPENSATION}
    previous: str | None = None
    for step, effect in pairs:
        name = registry.get(step.tool).compensation
        assert name is not None
        tool = registry.get(name)
        step_id = _free(f"undo_{step.step_id}", taken)
        taken.add(step_id)
        chain.append(
            Task(
                # ":" is in no plan step's id, so a compensation's task never takes a step's.
                task_id=f"{state.goal.goal_id}.{step.plan_version}.{step_id}:undo",
                goal_id=state.goal.goal_id,
                plan_version=step.plan_version,
                step_id=step_id,
                tool=name,
                arguments=_arguments(list(tool.args.model_fields), effect),
                depends_on=(previous,) if previous else (),
                pool=tool.pool,
                kind=TaskKind.COMPENSATION,
                key=f"{effect.key}:undo",
                compensates=step.task_id,
                undoes=effect.key,
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


def _arguments(fields: Sequence[str], effect: Effect) -> dict[str, Any]:
    """The compensating tool's arguments, each taken by name from what the effect's attempts
    reported (a result, or a partial failure's details), then from the arguments they ran
    with. What is missing the tool finds by the effect's key."""
    sources: tuple[Mapping[str, Any], ...] = (effect.result or {}, effect.arguments)
    picked: dict[str, Any] = {}
    for name in fields:
        for source in sources:
            if name in source:
                picked[name] = source[name]
                break
    return picked


def undone(state: GoalState) -> list[str]:
    """The steps whose effects were undone, each once, in the order they were undone."""
    done = {
        t.step_id: t
        for t in state.tasks.values()
        if t.kind is TaskKind.COMPENSATION and t.status is TaskStatus.SUCCEEDED
    }
    order = TopologicalSorter({s: t.depends_on for s, t in done.items()}).static_order()
    steps: list[str] = []
    for step in order:
        original = state.task(done[step].compensates or "") if step in done else None
        if original is not None and original.step_id not in steps:
            steps.append(original.step_id)
    return steps
