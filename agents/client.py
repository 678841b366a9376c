"""The Python SDK: submit goals, follow them, cancel them. Usable from any script::

    from agents.client import MeshClient

    with MeshClient() as mesh:
        handle = mesh.submit("onboard Acme", input={"company": "Acme", ...})
        final = handle.wait(timeout=60)
        print(final.status, final.summary)

A goal is accepted once the goals topic has it; its state is read from the ledger, the source of
truth, so ``status`` and ``wait`` see exactly what the planner decided.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import psycopg
from psycopg.rows import dict_row

from agents import events as ev
from agents.runtime.publisher import Publisher
from agents.runtime.settings import MeshSettings
from agents.runtime.telemetry import tracer
from schemas.codec import Codec

TERMINAL = frozenset({"completed", "failed", "cancelled"})
EXIT_CODES = {"completed": 0, "failed": 1, "cancelled": 1, "waiting_human": 3}


@dataclass(frozen=True)
class TaskStatus:
    step_id: str
    tool: str
    status: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    tokens: int
    cost_usd: float


@dataclass(frozen=True)
class GoalStatus:
    goal_id: str
    status: str  # submitted (not planned yet), planning, running, completed, failed, ...
    summary: str | None = None
    error_category: str | None = None
    steps_used: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    tasks: tuple[TaskStatus, ...] = field(default_factory=tuple)

    @property
    def settled(self) -> bool:
        """Nothing more happens without someone's action: finished, or waiting for a human."""
        return self.status in TERMINAL or self.status == "waiting_human"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class MeshClient:
    """Submits goals to the goals topic and reads their state from the ledger."""

    def __init__(self, settings: MeshSettings | None = None) -> None:
        self._settings = settings or MeshSettings()
        self._publisher = Publisher(settings=self._settings, codec=Codec(), client_id="mesh-client")

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def submit(
        self,
        text: str,
        *,
        input: dict[str, Any] | None = None,
        max_steps: int = 25,
        max_tokens: int | None = None,
        budget_usd: float | None = None,
        deadline_s: float | None = None,
        confidence_threshold: float = 0.0,
        max_replans: int = 2,
        compensation_policy: str = "all",
        submitted_by: str = "sdk",
        goal_id: str | None = None,
    ) -> GoalHandle:
        """Publish a GoalSubmitted and return once the broker has it."""
        goal_id = goal_id or ev.new_id()
        deadline = datetime.now(UTC) + timedelta(seconds=deadline_s) if deadline_s else None
        event = ev.GoalSubmitted(
            envelope=ev.Envelope(goal_id=goal_id, producer_agent="client", correlation_id=goal_id),
            text=text,
            input=input or {},
            max_steps=max_steps,
            max_tokens=max_tokens,
            budget_usd=budget_usd,
            deadline_at=deadline,
            confidence_threshold=confidence_threshold,
            max_replans=max_replans,
            compensation_policy=compensation_policy,
            submitted_by=submitted_by,
        )
        with tracer.start_as_current_span(f"goal {goal_id}"):  # the root of the goal's trace
            self._publisher.publish(event)
        self._publisher.flush()
        return GoalHandle(goal_id, self)

    def cancel(self, goal_id: str, *, reason: str = "", requested_by: str = "sdk") -> None:
        event = ev.GoalCancelled(
            envelope=ev.Envelope(goal_id=goal_id, producer_agent="client", correlation_id=goal_id),
            reason=reason,
            requested_by=requested_by,
        )
        self._publisher.publish(event)
        self._publisher.flush()

    def escalations(
        self, *, goal_id: str | None = None, open_only: bool = True
    ) -> list[Escalation]:
        """Questions the mesh asked humans (open ones by default), oldest first."""
        url = self._settings.database_url.get_secret_value()
        with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
            rows = conn.execute(
                "select e.escalation_id, e.goal_id, t.step_id, e.reason, e.evidence, e.options, "
                "e.status, e.default_action, e.expires_at, e.created_at, e.action "
                "from escalations e left join tasks t using (task_id) "
                "where (%s::text is null or e.goal_id = %s) "
                "and (not %s or e.status = 'open') order by e.created_at",
                (goal_id, goal_id, open_only),
            ).fetchall()
        return [Escalation(**r) for r in rows]

    def resolve(
        self,
        escalation_id: str,
        action: str,
        *,
        values: dict[str, Any] | None = None,
        resolved_by: str = "sdk",
    ) -> None:
        """Answer an escalation: approve, retry, abort, or set (new arguments, then retry)."""
        if action not in ("approve", "retry", "abort", "set"):
            raise ValueError(f"unknown action {action!r}: approve, retry, abort or set")
        found = [e for e in self.escalations(open_only=False) if e.escalation_id == escalation_id]
        if not found:
            raise LookupError(f"no escalation {escalation_id}")
        goal_id = found[0].goal_id
        event = ev.EscalationResolved(
            envelope=ev.Envelope(goal_id=goal_id, producer_agent="human", correlation_id=goal_id),
            escalation_id=escalation_id,
            action=action,
            values=values or {},
            resolved_by=resolved_by,
        )
        self._publisher.publish(event)
        self._publisher.flush()

    def status(self, goal_id: str) -> GoalStatus:
        url = self._settings.database_url.get_secret_value()
        with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
            return _status(conn, goal_id)

    def handle(self, goal_id: str) -> GoalHandle:
        """A handle on a goal submitted earlier (by anyone)."""
        return GoalHandle(goal_id, self)

    def close(self) -> None:
        self._publisher.close()


@dataclass(frozen=True)
class Escalation:
    escalation_id: str
    goal_id: str
    step_id: str | None
    reason: str
    evidence: dict[str, Any]
    options: list[str]
    status: str
    default_action: str
    expires_at: datetime | None
    created_at: datetime
    action: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GoalHandle:
    goal_id: str
    client: MeshClient

    def status(self) -> GoalStatus:
        return self.client.status(self.goal_id)

    def wait(
        self,
        timeout: float = 60.0,
        *,
        on_change: Callable[[GoalStatus], None] | None = None,
        interval: float = 0.1,
    ) -> GoalStatus:
        """Follow the goal until it settles; ``TimeoutError`` if it does not within ``timeout``."""
        deadline = time.monotonic() + timeout
        last: GoalStatus | None = None
        while True:
            current = self.status()
            if on_change is not None and current != last:
                on_change(current)
            last = current
            if current.settled:
                return current
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"goal {self.goal_id} is still {current.status} after {timeout:g}s"
                )
            time.sleep(interval)


def _status(conn: psycopg.Connection[dict[str, Any]], goal_id: str) -> GoalStatus:
    goal = conn.execute(
        "select goal_id, status, summary, error_category, steps_used, "
        "input_tokens + output_tokens as tokens, cost_usd, submitted_at, finished_at, plan_version "
        "from goals where goal_id = %s",
        (goal_id,),
    ).fetchone()
    if goal is None:
        return GoalStatus(goal_id=goal_id, status="submitted")
    rows = conn.execute(
        "select t.step_id, t.tool, t.status, t.attempt as attempts, t.first_started_at as "
        "started_at, t.finished_at, coalesce(sum(a.input_tokens + a.output_tokens), 0) as tokens, "
        "coalesce(sum(a.cost_usd), 0) as cost_usd from tasks t "
        "left join attempts a on a.task_id = t.task_id "
        "where t.goal_id = %s and t.plan_version = %s group by t.task_id "
        "order by t.first_started_at nulls last, t.step_id",
        (goal_id, goal.pop("plan_version")),
    ).fetchall()
    return GoalStatus(**goal, tasks=tuple(TaskStatus(**r) for r in rows))
