"""``mesh run worker``: a worker process for some capability pools (all when none is named)."""

from __future__ import annotations

from collections.abc import Collection

from agents import events as ev
from agents.app import load_app
from agents.runtime.app import AgentApp
from agents.runtime.consumer import HandlerSink
from agents.runtime.settings import MeshSettings
from agents.runtime.shortlived import CancelFlags, Leases, RateLimiter, ReplayCache
from agents.worker.agent import Worker


def run(
    settings: MeshSettings, *, pools: Collection[str] = (), concurrency: int | None = None
) -> int:
    parallel = concurrency or settings.worker_concurrency
    mesh_app = load_app(settings.app)
    app = AgentApp.start("worker", settings, db_size=parallel + 1)
    leases = Leases(app.redis, prefix=settings.topic_prefix, ttl_s=settings.lease_ttl_s)
    worker = Worker(
        registry=mesh_app.registry(),
        resources=app.tool_resources(),
        leases=leases,
        limiter=RateLimiter(app.redis, prefix=settings.topic_prefix),
        replay=ReplayCache(
            app.redis, prefix=settings.topic_prefix, codec=app.codec, ttl_s=settings.replay_ttl_s
        ),
        redis_client=app.redis,
        worker_id=app.client_id,
        pools=pools,
        scopes=settings.scopes(),
        flags=CancelFlags(app.redis, prefix=settings.topic_prefix),
        max_parallel_tools=parallel * 2,
    )
    leases.start_heartbeat()
    sink = HandlerSink(
        {ev.TaskAssigned: worker.on_assigned},
        concurrency=parallel,
        hooks=worker,
        inline=worker.runs_inline,
        span_name=worker.span_name,
        on_failure=worker.on_failure,
    )
    # Workers of the same pools share one group; each pool set reads the tasks topic on its own.
    suffix = "-" + "-".join(sorted(pools)) if pools else "-all"
    try:
        return app.serve(app.consumer(roles=("tasks",), sink=sink, group=app.group(suffix)))
    finally:
        leases.stop_heartbeat()
        worker.close()
