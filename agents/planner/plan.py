"""Validating an engine's plan draft against the tool catalogue, and resolving references.

Rules (each broken rule is a ``PlanInvalid`` whose category names it): at least one step and at
most the goal's step limit; unique step ids; known tools; dependencies that exist; no cycles;
arguments that the tool accepts (literal values are validated now, ``$ref`` values when they are
resolved at dispatch); references only to a field of the referenced tool's result, on a step that
is a (transitive) dependency.
"""

from __future__ import annotations

from collections.abc import Mapping
from graphlib import CycleError, TopologicalSorter
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from agents.engines.base import PlanDraft, PlanInvalid, PlanStep
from agents.tools.base import Registry, UnknownToolError

REF = "$ref"


DEFAULT_PLAN_STEPS = 1000


def validate_plan(
    draft: PlanDraft, registry: Registry, max_steps: int, *, most: int = DEFAULT_PLAN_STEPS
) -> list[str]:
    """Check ``draft``; return its step ids in a dependency order. Raises ``PlanInvalid``.

    A plan of more than ``most`` steps is refused first: the checks below keep each step's
    ancestors, which grows with the square of a chain's length (a 10,000-step chain took
    seconds and gigabytes)."""
    if not draft.steps:
        raise PlanInvalid("empty_plan", "the plan has no steps")
    if len(draft.steps) > most:
        raise PlanInvalid(
            "plan_too_large",
            f"the plan has {len(draft.steps)} steps; plans may have at most {most} "
            "(MESH_MAX_PLAN_STEPS)",
        )
    if len(draft.steps) > max_steps:
        raise PlanInvalid(
            "too_many_steps", f"the plan has {len(draft.steps)} steps; the limit is {max_steps}"
        )
    steps = _unique(draft.steps)
    order = _order(steps)
    ancestors = _ancestors(steps, order)
    for step in draft.steps:
        _check_step(step, steps, ancestors[step.id], registry)
    return order


def _unique(steps: list[PlanStep]) -> dict[str, PlanStep]:
    by_id: dict[str, PlanStep] = {}
    for step in steps:
        if step.id in by_id:
            raise PlanInvalid("duplicate_step", f"step id {step.id!r} is used twice")
        by_id[step.id] = step
    return by_id


def _order(steps: Mapping[str, PlanStep]) -> list[str]:
    for step in steps.values():
        for dep in step.depends_on:
            if dep not in steps:
                raise PlanInvalid(
                    "unknown_dependency", f"step {step.id!r} depends on unknown step {dep!r}"
                )
    sorter = TopologicalSorter({s.id: s.depends_on for s in steps.values()})
    try:
        return list(sorter.static_order())
    except CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise PlanInvalid("cyclic_plan", f"the plan has a dependency cycle: {cycle}") from exc


def _ancestors(steps: Mapping[str, PlanStep], order: list[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for step_id in order:  # dependencies come first, so their sets are complete
        deps = steps[step_id].depends_on
        found[step_id] = set(deps).union(*(found[d] for d in deps)) if deps else set()
    return found


def _check_step(
    step: PlanStep, steps: Mapping[str, PlanStep], ancestors: set[str], registry: Registry
) -> None:
    try:
        tool = registry.get(step.tool)
    except UnknownToolError as exc:
        raise PlanInvalid("unknown_tool", f"step {step.id!r}: {exc}") from exc
    fields = tool.args.model_fields
    unknown = set(step.arguments) - set(fields)
    if unknown:
        raise PlanInvalid(
            "invalid_arguments",
            f"step {step.id!r}: {step.tool} has no argument(s) {sorted(unknown)}",
        )
    for name, info in fields.items():
        if name not in step.arguments:
            if info.is_required():
                raise PlanInvalid(
                    "invalid_arguments", f"step {step.id!r}: {step.tool} needs argument {name!r}"
                )
            continue
        value = step.arguments[name]
        if _is_ref(value):
            _check_ref(step, name, value[REF], steps=steps, ancestors=ancestors, registry=registry)
        else:
            _check_literal(step, name, _field_adapter(tool.args, name), value)


_ADAPTERS: dict[tuple[type[BaseModel], str], TypeAdapter[Any]] = {}


def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    """A validator for one argument of a tool (building one costs as much as planning the rest
    of a step, so each is built once)."""
    adapter = _ADAPTERS.get((model, name))
    if adapter is None:
        info = model.model_fields[name]
        annotation: Any = (
            Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        )
        adapter = _ADAPTERS[(model, name)] = TypeAdapter(annotation)
    return adapter


def _check_literal(step: PlanStep, name: str, adapter: TypeAdapter[Any], value: Any) -> None:
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        raise PlanInvalid(
            "invalid_arguments", f"step {step.id!r}: argument {name!r} is invalid: {problem}"
        ) from exc


def _check_ref(
    step: PlanStep,
    name: str,
    ref: Any,
    *,
    steps: Mapping[str, PlanStep],
    ancestors: set[str],
    registry: Registry,
) -> None:
    source, _, field = str(ref).partition(".")
    where = f"step {step.id!r}: argument {name!r} refers to {ref!r}"
    if source not in ancestors:
        raise PlanInvalid("bad_reference", f"{where}, which is not one of its dependencies")
    result_fields = registry.get(steps[source].tool).result.model_fields
    if field not in result_fields:
        raise PlanInvalid("bad_reference", f"{where}; that result has only {sorted(result_fields)}")


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {REF}


def resolve_arguments(
    arguments: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """``arguments`` with every ``$ref`` replaced by the referenced step's result field."""
    resolved: dict[str, Any] = {}
    for name, value in arguments.items():
        if _is_ref(value):
            source, _, field = str(value[REF]).partition(".")
            resolved[name] = results[source][field]
        else:
            resolved[name] = value
    return resolved
