"""Celery peer lane: the same DAG shapes as Celery chains and chords over the local Redis.

Redis is both broker and result backend. The worker runs as a subprocess importing this module
(`celery -A bench.peers.celery_lane worker`); the settings it needs reach it through the
environment, since Celery builds its app at import time.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import Celery, chain, chord, group

from bench.driver import SHAPES, Deadline, LaneTimeout, Window, offered
from bench.driver import peer_tasks_per_goal as tasks_per_goal
from bench.model import LaneRun, ProcessUsage
from bench.peers._procs import (
    DriverUsage,
    TreeUsage,
    python_argv,
    spawn,
    stop,
    wait_until,
)
from bench.procs import InfraUsage

CHAIN_LENGTH = SHAPES["chain"]
FANOUT_WIDTH = SHAPES["fanout"]
# Celery's optimisation guide: many very short tasks want a larger prefetch than the default 4
# so a child never idles waiting for the broker; acks_late keeps prefetched work redeliverable.
PREFETCH_MULTIPLIER = 16
# A message taken but not acknowledged returns to the queue after this long if its whole worker
# dies; the run is far shorter, so it only bounds recovery time, it never fires here.
VISIBILITY_TIMEOUT_S = 300
COLLECT_WAIT_S = 0.05
# After this long with goals outstanding and no result landing, the collector reads the pending
# results from the backend instead of waiting on pub/sub: once, at one goal in flight, a chain's
# result was never announced to the subscriber and the lane waited out its whole deadline. Long
# enough that a working run rarely reads (a fan-out run's first join comes after every leaf of
# every goal in flight: seconds), and one pass is a read per pending goal.
STALL_S = 5.0
ENV_REDIS = "BENCH_CELERY_REDIS_URL"
ENV_PREFIX = "BENCH_CELERY_PREFIX"
ENV_QUEUE = "BENCH_CELERY_QUEUE"
DURABILITY = (
    "task messages in Redis, acked after the task runs (acks_late, reject_on_worker_lost): "
    "a crashed worker's tasks are redelivered; Redis persistence governs a broker crash"
)
NOTES = (
    "task overhead = task start in the worker - the moment it became runnable (goal submit for "
    "the first chain task and fan-out leaves, previous task's end for chain tasks, last leaf's "
    "end for the join); one warm-up goal runs before timing"
)


HOP, LEAF, JOIN = "bench.celery.hop", "bench.celery.leaf", "bench.celery.join"


def make_app(redis_url: str, prefix: str, queue: str) -> Any:
    """One app per run with identical settings on the driver and the worker. A fresh app, not
    a reconfigured one: Celery caches its broker pool and result backend on first use. The key
    prefix and queue isolate the run from any other user of the same Redis."""
    celery_app = Celery("bench_celery")
    celery_app.conf.update(
        broker_url=redis_url,
        result_backend=redis_url,
        broker_transport_options={
            "global_keyprefix": prefix,
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
        },
        result_backend_transport_options={"global_keyprefix": prefix},
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        worker_disable_rate_limits=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    celery_app.task(name=HOP)(_hop)
    celery_app.task(name=LEAF)(_leaf)
    celery_app.task(name=JOIN)(_join)
    return celery_app


# -- the tasks: no work, only what the overhead measurement needs --------------------------------


def _hop(state: list[Any]) -> list[Any]:
    """A chain link: [value, runnable_at, overheads] in, the same with value + 1 out."""
    started = time.time()
    value, runnable_at, overheads = state
    return [value + 1, time.time(), [*overheads, started - runnable_at]]


def _leaf(value: int, runnable_at: float) -> list[Any]:
    """A fan-out branch: [value + 1, finished_at, overhead]."""
    started = time.time()
    return [value + 1, time.time(), started - runnable_at]


def _join(leaves: list[list[Any]]) -> list[Any]:
    """The join: runnable once the last leaf finished."""
    started = time.time()
    runnable_at = max(leaf[1] for leaf in leaves)
    overheads = [leaf[2] for leaf in leaves]
    return [sum(leaf[0] for leaf in leaves), time.time(), [*overheads, started - runnable_at]]


# What `celery -A bench.peers.celery_lane worker` loads; the driver passes its settings in.
app: Any = make_app(
    os.environ.get(ENV_REDIS, "redis://127.0.0.1:6379/0"),
    os.environ.get(ENV_PREFIX, "bench-celery:"),
    os.environ.get(ENV_QUEUE, "bench-celery"),
)


def _signature(celery_app: Any, shape: str, runnable_at: float) -> Any:
    def sig(name: str, *args: Any) -> Any:
        return celery_app.signature(name, args=args)

    if shape == "chain":
        links = (sig(HOP) for _ in range(CHAIN_LENGTH - 1))
        return chain(sig(HOP, [0, runnable_at, []]), *links, app=celery_app)
    return chord(
        group((sig(LEAF, i, runnable_at) for i in range(FANOUT_WIDTH)), app=celery_app),
        sig(JOIN),
        app=celery_app,
    )


# -- the worker --------------------------------------------------------------------------------


def _start_worker(redis_url: str, prefix: str, queue: str, workers: int, log: Path) -> Any:
    env = os.environ | {ENV_REDIS: redis_url, ENV_PREFIX: prefix, ENV_QUEUE: queue}
    argv = python_argv(
        "-m", "celery", "-A", "bench.peers.celery_lane", "worker",
        "--pool", "prefork", "--concurrency", str(workers), "--queues", queue,
        "--hostname", f"{queue}@%h", "--loglevel", "WARNING",
        # Mingle and gossip only matter between long-lived worker nodes; they slow start-up.
        "--without-mingle", "--without-gossip",
    )  # fmt: skip
    return spawn(argv, env=env, log=log)


def _wait_ready(celery_app: Any, queue: str, deadline: Deadline) -> None:
    def answers() -> bool:
        replies = celery_app.control.ping(
            destination=[f"{queue}@{os.uname().nodename}"], timeout=0.5
        )
        return bool(replies)

    wait_until(answers, deadline=deadline, what="the Celery worker did not answer a ping")


def _cleanup(redis_url: str, prefix: str) -> None:
    """Delete every key this run made (results, chord counters, queue, unacked set)."""
    client = redis.Redis.from_url(redis_url)
    try:
        batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if batch:
            client.delete(*batch)
    finally:
        client.close()


# -- the driver --------------------------------------------------------------------------------


class _Collector:
    """Completion through Celery's own Redis pub/sub result consumer: every goal's result is
    subscribed to when submitted and drain_events fires its callback when it lands."""

    def __init__(self, celery_app: Any, shape: str, window: Window) -> None:
        self.app = celery_app
        self.shape = shape
        self.window = window
        self.pending: dict[str, Any] = {}
        self.overheads: list[float] = []
        self.recovered = 0  # results read from the backend after a stall, not announced
        self._last_landed = time.monotonic()

    def submit(self, _index: int) -> str:
        result = _signature(self.app, self.shape, time.time()).apply_async()
        self.pending[result.id] = result
        result.then(self._landed)
        return str(result.id)

    def _landed(self, result: Any) -> None:
        if self.pending.pop(result.id, None) is None:
            return  # already read after a stall; its announcement came late
        self._last_landed = time.monotonic()
        value = result.result
        if result.failed():
            raise RuntimeError(f"a Celery goal failed: {value!r}")
        self.overheads.extend(value[2])
        self.window.done(result.id, value[0])

    def collect(self, _outstanding: list[str]) -> None:
        # Returns after one message or the timeout, so the window re-checks its deadline.
        self.app.backend.result_consumer.drain_events(timeout=COLLECT_WAIT_S)
        if self.pending and time.monotonic() - self._last_landed > STALL_S:
            self.read_stalled()

    def read_stalled(self) -> None:
        """Land the pending results the backend already holds (``ready`` reads them)."""
        self._last_landed = time.monotonic()  # at most one such pass a stall period
        for result in list(self.pending.values()):
            # ``ready`` may fire the result's callback itself, which lands it.
            if result.ready() and result.id in self.pending:
                self.recovered += 1
                self._landed(result)


def _drive(
    celery_app: Any,
    shape: str,
    goals: int,
    in_flight: int,
    deadline: Deadline,
    rate: float | None = None,
) -> tuple[Window, _Collector]:
    window = offered(shape=shape, goals=goals, in_flight=in_flight, deadline=deadline, rate=rate)
    collector = _Collector(celery_app, shape, window)
    window.run(collector.submit, collector.collect)
    return window, collector


def run_celery(
    *,
    redis_url: str,
    shape: str,
    goals: int,
    in_flight: int,
    workers: int = 2,
    rate: float | None = None,
) -> LaneRun:
    """Run `goals` goals of `shape` through a Celery worker with `workers` prefork children."""
    tasks_per_goal(shape)
    deadline = Deadline("the Celery lane")
    run_id = uuid.uuid4().hex[:10]
    prefix, queue = f"bench-celery-{run_id}:", f"bench-celery-{run_id}"
    celery_app = make_app(redis_url, prefix, queue)
    log = Path(tempfile.gettempdir()) / f"bench-celery-{run_id}.log"
    worker = _start_worker(redis_url, prefix, queue, workers, log)
    try:
        _wait_ready(celery_app, queue, deadline)
        _drive(
            celery_app, shape, 1, 1, deadline
        )  # warm-up: imports and connections in every process
        driver = DriverUsage("celery-driver")
        tree, infra = TreeUsage([worker], "celery-worker"), InfraUsage(uses=("redis",))
        began = time.perf_counter()
        window, collector = _drive(celery_app, shape, goals, in_flight, deadline, rate)
        wall = time.perf_counter() - began
        processes: list[ProcessUsage] = [*tree.finish(), driver.finish(), *infra.finish()]
    except LaneTimeout as error:
        raise LaneTimeout(f"{error}; worker log: {log}") from error
    finally:
        stop(worker)
        celery_app.close()
        _cleanup(redis_url, prefix)
    log.unlink(missing_ok=True)
    return LaneRun(
        lane="celery",
        shape=shape,
        goals=goals,
        tasks=goals * tasks_per_goal(shape),
        load=window.load,
        wall_s=wall,
        goal_latencies_s=window.latencies,
        task_overheads_s=collector.overheads,
        processes=processes,
        durability=DURABILITY,
        notes=f"{NOTES}; in_flight {in_flight}, prefork x{workers}, "
        f"prefetch x{PREFETCH_MULTIPLIER}; {collector.recovered} result(s) read after a stall",
    )


if __name__ == "__main__":
    import json

    from bench.stats import summary

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    for shape_name, count, flight in (("chain", 50, 1), ("fanout", 50, 1), ("chain", 200, 32)):
        run = run_celery(redis_url=url, shape=shape_name, goals=count, in_flight=flight)
        data = run.as_json()
        data["goal_latencies_s"] = summary(run.goal_latencies_s)
        data["task_overheads_s"] = summary(run.task_overheads_s)
        print(json.dumps(data, indent=1))
