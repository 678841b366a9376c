"""``mesh run planner``: the planner process, its outbox sweeper and its lease watchdog."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import redis

from agents import events as ev
from agents.app import load_app
from agents.engines.select import engine_from_env
from agents.ledger.outbox import LedgerSink, sweep
from agents.ledger.prune import forget_fired_timers, forget_seen
from agents.planner.agent import Limits, Planner
from agents.planner.timers import fire_due
from agents.runtime.app import AgentApp
from agents.runtime.consumer import Linger
from agents.runtime.settings import MeshSettings
from agents.runtime.shortlived import CancelFlags, Lease, Leases
from topics.catalogue import spec_for

log = logging.getLogger(__name__)
HOUSEKEEPING_EVERY_S = 1.0
TIMERS_EVERY_S = 0.1
INBOX_EVERY_S = 60.0
INBOX_CHUNK = 10_000  # inbox rows forgotten at most per look, so one look never holds it long
FIRED_TIMERS_KEEP_S = 3600.0  # a fired timer is history; kept a while for whoever looks
ROLES = ("goals", "results", "escalations")  # the topics the planner consumes
# How long the inbox remembers an event: as long as any of those topics keeps it, after which
# no consumer can be handed it again.
INBOX_KEEP_S = max(spec_for(role).retention_ms for role in ROLES) / 1000


class Housekeeping:
    """Between batches: fire due timers (every 0.1 s, unless a batch begun since the last look
    found none due), and at most once a second relay orphaned outbox rows and report tasks
    whose worker stopped heartbeating as failed with ``lease_expired`` so the evaluator retries
    them; once a minute (each second while there is a backlog), forget inbox entries older than any
    of its topics keeps an event, and timers that fired over an hour ago."""

    def __init__(self, app: AgentApp, leases: Leases, planner: Planner, sink: LedgerSink) -> None:
        self._app = app
        self._sink = sink
        self._leases = leases
        self._planner = planner
        self._next = 0.0
        self._next_timers = 0.0
        self._looked_at = 0.0  # when timers were last looked for here
        self._next_inbox = 0.0
        self._trust_leases_at = 0.0  # see ``_expired``

    def __call__(self) -> None:
        now = time.monotonic()
        if now >= self._next_timers:
            # Under load every batch asks in its first round trip; a query of its own each
            # tenth of a second besides was 7% of a busy planner's time. So it asks only when
            # no batch has since its last look (a due timer is then found by the next batch).
            looked, self._looked_at = self._looked_at, now
            self._next_timers = now + TIMERS_EVERY_S
            if self._planner.timers_may_be_due(since=looked):
                fire_due(self._app.db, self._app.publisher, self._planner)
        if now < self._next:
            return
        self._next = now + HOUSEKEEPING_EVERY_S
        self._sink.settle()  # before the sweep, so delivered rows are not sent again
        sweep(self._app.db, self._app.publisher)
        if now >= self._next_inbox:
            forgotten = forget_seen(self._app.db, older_than_s=INBOX_KEEP_S, limit=INBOX_CHUNK)
            forgotten += forget_fired_timers(
                self._app.db, older_than_s=FIRED_TIMERS_KEEP_S, limit=INBOX_CHUNK
            )
            self._next_inbox = next_inbox_look(now, forgotten)
        expired = self._expired(now)
        for lease in expired:
            log.warning("lease of %s attempt %d expired", lease.task_id, lease.attempt)
            self._app.publisher.publish(_lease_expired(lease))
        if expired:
            self._app.publisher.flush()

    def _expired(self, now: float) -> list[Lease]:
        """Leases whose worker stopped heartbeating. After Redis was away, none for a lease's
        length: the leases of calls still running lapsed meanwhile, and their heartbeats need
        that long to put them back."""
        if now < self._trust_leases_at:
            return []
        try:
            return self._leases.take_expired()
        except redis.RedisError:
            self._trust_leases_at = now + self._leases.ttl_s
            raise


def next_inbox_look(now: float, forgotten: int) -> float:
    """When to forget expired inbox rows again, after a look at ``now`` forgot ``forgotten``: a
    full chunk means more are due, so a second later rather than a minute, and a planner taking
    more than a chunk's worth of events a minute keeps up."""
    return now + (HOUSEKEEPING_EVERY_S if forgotten >= INBOX_CHUNK else INBOX_EVERY_S)


def _lease_expired(lease: Lease) -> ev.TaskFailed:
    now = datetime.now(UTC)
    return ev.TaskFailed(
        envelope=ev.Envelope(goal_id=lease.goal_id, producer_agent="planner"),
        task_id=lease.task_id,
        step_id=lease.step_id,
        tool=lease.tool,
        attempt=lease.attempt,
        category="lease_expired",
        message="the worker stopped heartbeating",
        retryable=True,
        worker_id="watchdog",
        started_at=now,
        finished_at=now,
    )


def run(settings: MeshSettings) -> int:
    mesh_app = load_app(settings.app)
    app = AgentApp.start("planner", settings)
    flags = CancelFlags(app.redis, prefix=settings.topic_prefix)
    planner = Planner(
        engine=engine_from_env(mesh_app.playbooks()),
        registry=mesh_app.registry(),
        limits=Limits(
            same_failure=settings.same_failure_limit,
            no_progress=settings.no_progress_limit,
            escalation_ttl_s=settings.escalation_ttl_s,
            escalation_default=settings.escalation_default,
            infra_retries=settings.infra_retries,
            plan_steps=settings.max_plan_steps,
        ),
        on_cancel=flags.raise_flag,
        mesh=settings.topic_prefix,
    )
    sweep(app.db, app.publisher, older_than_s=0)  # what a previous planner left unsent
    leases = Leases(app.redis, prefix=settings.topic_prefix, ttl_s=settings.lease_ttl_s)
    sink = LedgerSink(
        pool=app.db,
        consumer=app.group(),  # the inbox is per consumer group: per mesh, like the group
        handlers=planner.handlers(),
        on_refused=planner.on_refused,
        hooks=planner,
        span_name=planner.span_name,
    )
    runtime = app.consumer(
        roles=ROLES,
        sink=sink,
        tick=Housekeeping(app, leases, planner, sink),
        linger=_linger(settings),
    )
    return app.serve(runtime)


def _linger(settings: MeshSettings) -> Linger | None:
    """A batch of nothing but outcomes waits a moment for their verdicts (``Linger``)."""
    if not settings.planner_linger_ms:
        return None
    return Linger(frozenset({ev.TaskCompleted, ev.TaskFailed}), settings.planner_linger_ms / 1000)
