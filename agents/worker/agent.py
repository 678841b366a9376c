"""The worker agent.

Consumes: ``tasks`` (TaskAssigned) for its capability pools. Emits: TaskCompleted or TaskFailed
on ``results``. Run it with ``mesh run worker [--pool NAME[,NAME]] [--concurrency N]``; any number
may run, workers of the same pools share the work.

A worker holds no state of its own. It validates the call against the tool registry (an unknown
tool or invalid arguments is a categorised TaskFailed, never a crash), takes a lease that a
heartbeat keeps alive while the tool runs, enforces the tool's timeout and rate limit, and reports
the typed result. Tools are idempotent by the task's idempotency key, so a task re-delivered after
a crash repeats no side effect; the task's fencing token goes with the call, so a superseded
attempt cannot act, and a call the worker stops waiting for is told to stop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from opentelemetry import trace
from opentelemetry.trace import StatusCode
from pydantic import BaseModel, ValidationError

from agents import events as ev
from agents.ledger.db import remember
from agents.runtime.consumer import Delivery, Item
from agents.runtime.crash import crashpoint
from agents.runtime.errors import unavailable
from agents.runtime.shortlived import CancelFlags, Lease, Leases, RateLimiter, ReplayCache
from agents.tools.base import (
    CancelledError,
    Registry,
    Tool,
    ToolContext,
    ToolError,
    ToolResources,
    ToolTimeoutError,
    UnreportableResultError,
)

log = logging.getLogger(__name__)
AGENT = "worker"
_REMEMBERED_GOALS = 4096


__all__ = ["CancelledError", "ForbiddenToolError", "ToolTimeoutError", "Worker"]


class ForbiddenToolError(ToolError):
    """The tool needs a credential scope this worker was not given."""

    category = "forbidden"


@dataclass
class _Batch:
    """What ``before_batch`` fetched for a batch of tasks, and what its handlers leave behind."""

    leases: dict[tuple[str, int], Lease]
    stored: dict[tuple[str, int], ev.Event | None]
    cancelled: set[str]
    outcomes: list[tuple[tuple[str, int], ev.Event]] = field(default_factory=list)


def _lease(event: ev.TaskAssigned) -> Lease:
    return Lease(event.task_id, event.attempt, event.goal_id, event.step_id, event.tool)


class Worker:
    """Runs one task attempt at a time per calling thread; a batch's Redis calls go together."""

    def __init__(
        self,
        *,
        registry: Registry,
        resources: ToolResources,
        leases: Leases,
        limiter: RateLimiter,
        replay: ReplayCache,
        redis_client: redis.Redis,
        worker_id: str,
        pools: Collection[str] = (),
        scopes: Collection[str] | None = None,
        flags: CancelFlags | None = None,
        max_parallel_tools: int = 16,
    ) -> None:
        self._flags = flags
        self._batch: _Batch | None = None
        self._inputs: dict[str, dict[str, Any]] = {}
        self._scopes = None if scopes is None else frozenset(scopes)
        self._registry = registry
        self._resources = resources
        self._leases = leases
        self._limiter = limiter
        self._replay = replay
        self._redis = redis_client
        self._worker_id = worker_id
        self._pools = frozenset(pools)
        # Tool calls run here so a timeout can be enforced; a call that overstays is reported
        # as timed out and told to stop (its effect is idempotent and fenced if it goes on).
        self._calls = ThreadPoolExecutor(max_parallel_tools, thread_name_prefix="tool")

    def serves(self, pool: str) -> bool:
        return not self._pools or pool in self._pools

    def span_name(self, item: Item) -> str | None:
        """A task's record is handled in its tool call's span (``tool <name>``), which is the
        record's consumer span too: a child span for the call alone cost as much as the rest of
        the record's tracing. Another pool's task, passed over, has none."""
        event = item.event
        if isinstance(event, ev.TaskAssigned) and self.serves(event.pool):
            return f"tool {event.tool}"
        return None

    def runs_inline(self, event: ev.Event) -> bool:
        """Whether handling ``event`` never waits: another pool's task, or an inline tool
        without a rate limit (see ``Tool.inline``). The sink runs these on its own thread."""
        if not isinstance(event, ev.TaskAssigned) or not self.serves(event.pool):
            return True
        if event.tool not in self._registry:
            return True  # refused at once
        tool = self._registry.get(event.tool)
        return tool.inline and tool.rate_limit_per_s is None

    def before_batch(self, events: Sequence[ev.Event]) -> None:
        """One Redis round trip for the whole batch: stored outcomes, cancel flags, leases."""
        mine = [e for e in events if isinstance(e, ev.TaskAssigned) and self.serves(e.pool)]
        if not mine:
            return
        flags = self._flags
        goals = sorted({e.goal_id for e in mine}) if flags is not None else []
        keys = [self._replay.key("outcome", e.task_id, e.attempt) for e in mine]
        pipe = self._redis.pipeline(transaction=False)
        # One MGET for every stored outcome and cancel flag: a command per key was most of the
        # cost of the round trip (redis-py packs each command in Python).
        pipe.mget(keys + [flags.key(g) for g in goals] if flags is not None else keys)
        # Only the calls that start at once are leased here; one that may wait for a pool thread
        # takes its lease when it starts, so a worker that dies loses only the calls it was
        # running: the rest are simply delivered again, not retried as lost.
        leases = {(e.task_id, e.attempt): _lease(e) for e in mine if self.runs_inline(e)}
        self._leases.acquire(*leases.values(), pipe=pipe)
        try:
            values = pipe.execute()[0]
        except redis.RedisError:
            self._leases.forget(*leases.values())  # the handlers take their own, one by one
            raise
        attempts = [(e.task_id, e.attempt) for e in mine]
        self._batch = _Batch(
            leases=leases,
            stored={k: self._replay.decode(v) for k, v in zip(attempts, values, strict=False)},
            cancelled={g for g, raised in zip(goals, values[len(mine) :], strict=True) if raised},
        )

    def after_batch(self) -> None:
        """Store the batch's outcomes for replay and give back its leases, in one round trip."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        pipe = self._redis.pipeline(transaction=False)
        for (task_id, attempt), outcome in batch.outcomes:
            self._replay.remember("outcome", task_id, attempt, outcome, pipe=pipe)
        self._leases.release(*batch.leases.values(), pipe=pipe)
        try:
            pipe.execute()
        except redis.RedisError as exc:  # leases lapse, replays re-run: both harmless
            log.warning("could not store outcomes or release leases: %s", exc)

    def on_assigned(self, event: ev.TaskAssigned, delivery: Delivery) -> list[ev.Event]:
        if not self.serves(event.pool):
            return []  # another pool's task
        key = (event.task_id, event.attempt)
        batch = self._batch if self._batch is not None and key in self._batch.stored else None
        if batch is not None:
            done = batch.stored.get(key)
        else:
            done = self._replay.recall("outcome", event.task_id, event.attempt)
        if done is not None:  # this attempt already ran: send the same outcome again
            trace.get_current_span().set_attribute("mesh.replayed", True)
            return [done]
        leased = batch is not None and key in batch.leases  # an instant call of the batch
        outcome = self._run(event, batch, leased=leased)
        if batch is not None and leased:  # run within its batch: stored with it
            batch.outcomes.append((key, outcome))
        else:  # a pool thread's call may end after its batch was written back
            self._replay.remember("outcome", event.task_id, event.attempt, outcome)
        return [outcome]

    def _run(
        self, event: ev.TaskAssigned, batch: _Batch | None, *, leased: bool
    ) -> ev.TaskCompleted | ev.TaskFailed:
        """Run the attempt under a lease (the batch's when ``leased``, or one taken and given
        back here)."""
        lease = _lease(event)
        started = datetime.now(UTC)
        if not leased:
            self._leases.acquire(lease)
        try:
            result = self._call(event, batch)
            crashpoint("worker.after_effect")
        except ToolError as exc:
            return self._failed(event, started, exc)
        finally:
            if not leased:
                self._leases.release(lease)
        try:
            return self._completed(event, started, result)
        except ValidationError as exc:  # the planner must hear of the call all the same
            reason = f"{event.tool} returned what no event can carry: {ev.refusal(exc)}"
            return self._failed(event, started, UnreportableResultError(reason))

    def on_failure(self, event: ev.TaskAssigned, category: str, reason: str) -> list[ev.Event]:
        """The outcome of an assignment the worker gave up on (dead-lettered): a failure, so the
        planner decides what next instead of waiting for ever."""
        if not self.serves(event.pool):
            return []
        error = ToolError(reason)
        error.category = category
        return [self._failed(event, datetime.now(UTC), error)]

    def _cancelled(self, goal_id: str, batch: _Batch | None = None) -> bool:
        if batch is not None:
            return goal_id in batch.cancelled
        return self._flags is not None and self._flags.is_raised(goal_id)

    def _call(self, event: ev.TaskAssigned, batch: _Batch | None) -> BaseModel:
        tool = self._registry.get(event.tool)
        if event.kind == "action" and self._cancelled(event.goal_id, batch):
            raise CancelledError(f"goal {event.goal_id} was cancelled; {tool.name} did not run")
        missing = set(tool.scope) - self._scopes if self._scopes is not None else set()
        if missing:
            raise ForbiddenToolError(f"{tool.name} needs scope(s) {sorted(missing)}")
        args = tool.parse_args(event.arguments)
        if tool.rate_limit_per_s is not None:
            self._limiter.wait_turn(tool.name, tool.rate_limit_per_s)
        timeout_s = event.timeout_s or tool.timeout_s
        try:
            result = self._invoke(tool, args, self._context(event, timeout_s), timeout_s)
        except ToolError:
            raise
        except Exception as exc:  # a tool bug is the tool's failure, not the worker's
            if unavailable(exc) is not None:
                raise  # Postgres, Redis or Kafka away: the call is made again once it is back
            log.exception("tool %s raised", tool.name)
            raise ToolError(f"{tool.name} raised {type(exc).__name__}: {exc}") from exc
        return _checked(tool, result)

    def _invoke(
        self, tool: Tool[Any, Any], args: BaseModel, context: ToolContext, timeout_s: float
    ) -> Any:
        """Run the call, on a thread of its own unless inline, for at most ``timeout_s``."""
        if tool.inline:
            return tool.run(args, context)
        future = self._calls.submit(tool.run, args, context)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout as exc:
            # Told to stop (``ctx.cancelled()``): left running, the call could act after a newer
            # attempt or the rollback; one that has not started yet never runs.
            context.given_up.set()
            future.cancel()
            raise ToolTimeoutError(f"{tool.name} did not finish within {timeout_s:g}s") from exc

    def _context(self, event: ev.TaskAssigned, timeout_s: float) -> ToolContext:
        goal_id, action = event.goal_id, event.kind == "action"
        return ToolContext(
            goal_id=event.goal_id,
            task_id=event.task_id,
            step_id=event.step_id,
            attempt=event.attempt,
            idempotency_key=event.idempotency_key,
            goal_input=_GoalInput(lambda: self._goal_input(event.goal_id)),
            resources=self._resources,
            feedback=event.feedback,
            # A compensation runs because its goal ended: the goal's cancel flag is not for it.
            goal_cancelled=lambda: action and self._cancelled(goal_id),
            fence=event.fence,
            undoes=event.undoes,
            deadline=time.monotonic() + timeout_s,
        )

    def _goal_input(self, goal_id: str) -> dict[str, Any]:
        """The goal's input (never changes once submitted, so it is remembered per goal)."""
        known = self._inputs.get(goal_id)
        if known is not None:
            return known
        with self._resources.db.connection() as conn:
            row = conn.execute("select input from goals where goal_id = %s", (goal_id,)).fetchone()
        found = dict(row[0]) if row else {}
        if row:
            remember(self._inputs, goal_id, found, most=_REMEMBERED_GOALS)
        return found

    def _completed(
        self, event: ev.TaskAssigned, started: datetime, result: BaseModel
    ) -> ev.TaskCompleted:
        return ev.TaskCompleted(
            envelope=self._envelope(event),
            task_id=event.task_id,
            step_id=event.step_id,
            tool=event.tool,
            attempt=event.attempt,
            result=result.model_dump(mode="json"),
            worker_id=self._worker_id,
            started_at=started,
            finished_at=datetime.now(UTC),
            arguments=event.arguments,
        )

    def _failed(self, event: ev.TaskAssigned, started: datetime, exc: ToolError) -> ev.TaskFailed:
        log.info(
            "task %s attempt %d failed: %s: %s", event.task_id, event.attempt, exc.category, exc
        )
        span = trace.get_current_span()  # the tool call's (``span_name``)
        span.record_exception(exc)
        span.set_status(StatusCode.ERROR, f"{exc.category}: {exc}")
        return ev.TaskFailed(
            envelope=self._envelope(event),
            task_id=event.task_id,
            step_id=event.step_id,
            tool=event.tool,
            attempt=event.attempt,
            category=exc.category,
            message=str(exc),
            retryable=exc.retryable,
            worker_id=self._worker_id,
            started_at=started,
            finished_at=datetime.now(UTC),
            details=_jsonable(exc.details),
            arguments=event.arguments,
        )

    def _envelope(self, event: ev.TaskAssigned) -> ev.Envelope:
        return ev.Envelope(
            goal_id=event.goal_id,
            producer_agent=AGENT,
            correlation_id=event.envelope.correlation_id,
            causation_id=event.event_id,
        )

    def close(self) -> None:
        self._calls.shutdown(wait=False, cancel_futures=True)


class _GoalInput(Mapping[str, Any]):
    """A goal's input, read from the ledger the first time a tool looks at it: most tools never
    do, and a query per goal was a sixth of an instant tool's cost."""

    def __init__(self, load: Callable[[], dict[str, Any]]) -> None:
        self._load = load
        self._value: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any]:
        if self._value is None:
            self._value = self._load()
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _checked(tool: Tool[Any, Any], result: Any) -> BaseModel:
    if not isinstance(result, tool.result):
        raise ToolError(f"{tool.name} returned {type(result).__name__}, not {tool.result.__name__}")
    assert isinstance(result, BaseModel)
    return result


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.dumps(details, default=str)))
