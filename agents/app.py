"""The application object: a user's tools and playbooks, declared once and loaded by every role.

    from agents import MeshApp, ToolContext

    app = MeshApp("payments")

    @app.tool(timeout_s=10, compensation="refund")
    def charge(args: ChargeArgs, ctx: ToolContext) -> Receipt:
        \"\"\"Charge a customer.\"\"\"

    @app.playbook("charge", keywords=("charge",))
    def charge_plan(goal_input: Mapping[str, Any]) -> PlanDraft: ...

Every role loads the same object: ``mesh run worker --app payments.mesh:app`` (or
``MESH_APP=payments.mesh:app``), the way ``celery -A`` and ``uvicorn`` find theirs. The planner
validates plans against its tools and plans with its playbooks, the evaluator judges by its tools'
result models, checks and retry policies, and workers run them. Without ``--app`` the mesh loads
the tools and playbooks it ships (``agents.apps.builtin:app``). An app may include others
(``MeshApp("payments", include=[builtin.app])``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from agents.engines.base import PlanDraft, PlanStep
from agents.engines.offline import Playbook
from agents.runtime.errors import ConfigError
from agents.tools.base import (
    PermanentToolError,
    Registry,
    RetryPolicy,
    Tool,
    ToolContext,
    ToolError,
    TransientToolError,
    tool,
)

# What an app's module needs, from one place.
__all__ = [
    "MeshApp",
    "PermanentToolError",
    "PlanDraft",
    "PlanStep",
    "RetryPolicy",
    "ToolContext",
    "ToolError",
    "TransientToolError",
    "load_app",
]

A = TypeVar("A", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
Build = Callable[[Mapping[str, Any]], PlanDraft]
Named = TypeVar("Named", Tool[Any, Any], Playbook)

DEFAULT_APP = "agents.apps.builtin:app"


class MeshApp:
    """A named set of tools and offline-engine playbooks."""

    def __init__(self, name: str, *, include: Iterable[MeshApp] = ()) -> None:
        self.name = name
        self._tools: list[Tool[Any, Any]] = []
        self._playbooks: list[Playbook] = []
        for other in include:
            self.include(other)

    def tool(self, **options: Any) -> Callable[[Callable[[A, ToolContext], R]], Tool[A, R]]:
        """Declare a tool (``agents.tools.base.tool``'s options) and add it to the app."""
        make = tool(**options)

        def wrap(fn: Callable[[A, ToolContext], R]) -> Tool[A, R]:
            made = make(fn)
            self.add_tools(made)
            return made

        return wrap

    def add_tools(self, *tools: Tool[Any, Any]) -> None:
        """Add tools made elsewhere (with ``agents.tools.base.tool``)."""
        self._add("tools", self._tools, tools)

    def playbook(self, name: str, *, keywords: Iterable[str] = ()) -> Callable[[Build], Build]:
        """Declare a playbook of the offline engine: ``build(goal_input) -> PlanDraft``, chosen for
        a goal whose input names it (``{"playbook": name}``) or whose text has a keyword."""

        def wrap(build: Build) -> Build:
            self.add_playbooks(Playbook(name=name, build=build, keywords=tuple(keywords)))
            return build

        return wrap

    def add_playbooks(self, *playbooks: Playbook) -> None:
        self._add("playbooks", self._playbooks, playbooks)

    def _add(self, kind: str, held: list[Named], new: Iterable[Named]) -> None:
        """Append ``new`` to ``held``, refusing a name the app already has."""
        known = {item.name for item in held}
        for item in new:
            if item.name in known:
                raise ValueError(f"app {self.name!r} has two {kind} named {item.name!r}")
            known.add(item.name)
            held.append(item)

    def include(self, other: MeshApp) -> None:
        """Everything ``other`` declares, as if declared here."""
        self.add_tools(*other._tools)
        self.add_playbooks(*other._playbooks)

    def registry(self) -> Registry:
        return Registry(self._tools)

    def playbooks(self) -> tuple[Playbook, ...]:
        return tuple(self._playbooks)

    def __repr__(self) -> str:
        return f"MeshApp({self.name!r}, {len(self._tools)} tools, {len(self._playbooks)} playbooks)"


def load_app(spec: str) -> MeshApp:
    """The app ``spec`` names (``package.module:attribute``; the attribute defaults to ``app``);
    ``ConfigError`` naming the fix when it cannot be had."""
    module_name, _, attribute = spec.strip().partition(":")
    attribute = attribute or "app"
    if not module_name or not all(
        part.isidentifier() for part in (*module_name.split("."), attribute)
    ):
        raise ConfigError(
            f"the app {spec!r} should look like package.module:app (set MESH_APP or --app)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {module_name!r} for the app {spec!r} ({exc}): install the package "
            "that provides it into this environment, or add its folder to PYTHONPATH"
        ) from exc
    found = getattr(module, attribute, None)
    if found is None:
        raise ConfigError(f"{module_name} has no {attribute!r}; name the MeshApp it defines")
    if not isinstance(found, MeshApp):
        raise ConfigError(f"{spec} is a {type(found).__name__}, not a MeshApp")
    return found
