"""What every agent process sets up the same way: settings checked, tracing, the producer, the
ledger pool, Redis, signals, and a clean stop (finish the batch in hand, flush, commit, leave)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import redis
from psycopg_pool import ConnectionPool

from agents.ledger.db import open_pool
from agents.runtime.consumer import Backoff, ConsumerRuntime, Linger, Sink
from agents.runtime.kafka import check_kafka
from agents.runtime.publisher import Publisher
from agents.runtime.services import check_redis
from agents.runtime.settings import MeshSettings
from agents.runtime.telemetry import setup_tracing
from agents.tools.base import ToolResources
from schemas.codec import Codec

log = logging.getLogger(__name__)

# The cyclic garbage collector's thresholds in an agent process (Python's are 700, 10, 10). A busy
# role makes thousands of short-lived containers a second (events, rows, spans) that reference
# counting frees; at the defaults the collector still ran after every 700 net allocations and
# now and then scanned the whole heap, kept plans and caches included: 14% of a planner's CPU
# at saturation. After 50,000 the cyclic leftovers it waits for stay within about ten megabytes.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """Set ``GC_THRESHOLDS``, and leave what start-up built (modules, schemas, clients: alive as
    long as the process) out of every later collection."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def group_id(topic_prefix: str, name: str) -> str:
    """The consumer group ``name`` (a role, and a suffix where the role has several) of the
    mesh with ``topic_prefix``; the planner's is also the key of its inbox rows."""
    return f"{topic_prefix}{name}"


def instance_id(role: str) -> str:
    """A readable id for this process: role, host and pid."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


@dataclass
class AgentApp:
    """The shared pieces of one agent process."""

    role: str
    settings: MeshSettings
    client_id: str
    codec: Codec
    publisher: Publisher
    db: ConnectionPool
    redis: redis.Redis

    @classmethod
    def start(
        cls, role: str, settings: MeshSettings, *, db_size: int = 4, reads_only: bool = False
    ) -> AgentApp:
        """Check every service first (fail fast, fix named), then build the pieces. A role that
        ``reads_only`` from the ledger gets autocommit connections: no transaction to begin
        and commit around each read, which was a round trip per batch."""
        check_kafka(settings)
        check_redis(settings)
        db = open_pool(settings, max_size=db_size, autocommit=reads_only)
        provider = setup_tracing(f"mesh-{role}")
        del provider
        client_id = instance_id(role)
        codec = Codec()
        return cls(
            role=role,
            settings=settings,
            client_id=client_id,
            codec=codec,
            publisher=Publisher(settings=settings, codec=codec, client_id=client_id),
            db=db,
            # A Redis that stops answering (paused, or a network cut) fails a call after this
            # long rather than hanging the thread that made it.
            redis=redis.Redis.from_url(
                settings.redis_url.get_secret_value(),
                socket_timeout=settings.connect_timeout_s,
                socket_connect_timeout=settings.connect_timeout_s,
            ),
        )

    def group(self, suffix: str = "") -> str:
        """Consumer group of this role, isolated per topic prefix."""
        return group_id(self.settings.topic_prefix, f"{self.role}{suffix}")

    def tool_resources(self) -> ToolResources:
        return ToolResources(db=self.db, sandbox_dir=Path(self.settings.sandbox_dir))

    def consumer(
        self,
        *,
        roles: Sequence[str],
        sink: Sink,
        group: str | None = None,
        tick: Callable[[], None] | None = None,
        linger: Linger | None = None,
    ) -> ConsumerRuntime:
        return ConsumerRuntime(
            settings=self.settings,
            codec=self.codec,
            publisher=self.publisher,
            group_id=group or self.group(),
            roles=roles,
            sink=sink,
            client_id=self.client_id,
            backoff=Backoff(),
            tick=tick,
            linger=linger,
        )

    def serve(self, runtime: ConsumerRuntime) -> int:
        """Run until SIGTERM or SIGINT, then stop cleanly; returns the exit code."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: finishing the batch in hand, then stopping", signum)
            runtime.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("%s %s running", self.role, self.client_id)
        tune_collector()
        try:
            runtime.run()
        finally:
            self.db.close()
            self.redis.close()
        log.info("%s %s stopped", self.role, self.client_id)
        return 0
