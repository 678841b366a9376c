"""DBOS peer lane: the same DAG shapes as DBOS durable workflows in the local Postgres.

Each goal is a workflow enqueued by the driver (a DBOSClient) on a DBOS queue; `workers`
separate processes launch DBOS against the same system database and dequeue from it, which is
DBOS's documented way to spread workflows over processes. A chain is six sequential steps in
one workflow; a fan-out enqueues twenty one-step child workflows on a second queue (so the
branches spread over every worker), waits for them and runs a join step.

The run gets a database of its own, created and dropped here, so the mesh ledger is untouched.
The worker processes run this module: `python -m bench.peers.dbos_lane worker <url> <id>`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from dbos import DBOS, DBOSClient, DBOSConfig, WorkflowHandle
from psycopg import sql

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
APP_NAME = "bench_dbos"
GOAL_QUEUE = "bench_goals"
TASK_QUEUE = "bench_tasks"
CHAIN_WORKFLOW, FANOUT_WORKFLOW = "bench.dbos.chain", "bench.dbos.fanout"
# DBOS queues are polled (default every 1 s). 10 ms is the latency/database-load trade-off
# chosen here: dequeue waits ~5 ms on average, at the cost of ~100 polls/s per queue per worker.
QUEUE_POLL_S = 0.01
# Waiting on a workflow's result is also a poll of its status row.
RESULT_POLL_S = 0.005
READY_LINE = "bench-dbos-worker-ready"
POOL_TIMEOUT_S = 300
DURABILITY = (
    "every workflow's input, each step's output and the final result checkpointed in Postgres: "
    "a crashed worker's workflows resume from the last completed step on recovery"
)
NOTES = (
    "task overhead = step start - the moment it became runnable (goal enqueue for the first "
    "chain step and the fan-out branches, previous step's end in a chain, last branch's end "
    "for the join), so it includes queue polling and checkpoint writes; "
    f"queue poll {QUEUE_POLL_S * 1000:.0f} ms, result poll {RESULT_POLL_S * 1000:.0f} ms; "
    "one warm-up goal runs before timing"
)


# -- the workflows: no work, only what the overhead measurement needs -----------------------------


@DBOS.step(name="bench.dbos.task")
def task_step(value: int, runnable_at: float) -> list[Any]:
    """[value + 1, finished_at, overhead]."""
    started = time.time()
    return [value + 1, time.time(), started - runnable_at]


@DBOS.step(name="bench.dbos.join")
def join_step(leaves: list[list[Any]]) -> list[Any]:
    started = time.time()
    runnable_at = max(leaf[1] for leaf in leaves)
    overheads = [leaf[2] for leaf in leaves]
    return [sum(leaf[0] for leaf in leaves), [*overheads, started - runnable_at]]


@DBOS.workflow(name=CHAIN_WORKFLOW)
def chain_goal(runnable_at: float) -> list[Any]:
    """Six sequential steps; each is runnable when the previous one has finished."""
    value, overheads = 0, []
    for _ in range(CHAIN_LENGTH):
        value, runnable_at, overhead = task_step(value, runnable_at)
        overheads.append(overhead)
    return [value, overheads]


@DBOS.workflow(name="bench.dbos.leaf")
def leaf_goal(value: int, runnable_at: float) -> list[Any]:
    return task_step(value, runnable_at)


@DBOS.workflow(name=FANOUT_WORKFLOW)
def fanout_goal(runnable_at: float) -> list[Any]:
    """Twenty branches on the task queue, any worker may run them, then the join."""
    queue = DBOS.retrieve_queue(TASK_QUEUE)
    if queue is None:
        raise RuntimeError(f"queue {TASK_QUEUE} is not registered")
    handles = [queue.enqueue(leaf_goal, i, runnable_at) for i in range(FANOUT_WIDTH)]
    leaves = [h.get_result(polling_interval_sec=RESULT_POLL_S) for h in handles]
    return join_step(leaves)


# -- the worker process ---------------------------------------------------------------------------


def worker_main(database_url: str, executor_id: str) -> None:
    """Launch DBOS, serve both queues until SIGTERM, then shut DBOS down."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": database_url,
        # Distinct per process: recovery at launch takes over the workflows of its own id.
        "executor_id": executor_id,
        "log_level": "WARNING",
        # Hundreds of fan-out workflows poll their children through the pool; at a slow moment
        # one waited more than the default 30 s for a connection and the lane failed. Waiting
        # longer changes no figure of a run that finishes.
        "db_engine_kwargs": {"pool_timeout": POOL_TIMEOUT_S},
    }
    DBOS(config=config)
    DBOS.launch()
    for name in (GOAL_QUEUE, TASK_QUEUE):
        DBOS.register_queue(name, polling_interval_sec=QUEUE_POLL_S)
    print(READY_LINE, flush=True)
    stopping.wait()
    DBOS.destroy()


def _start_worker(database_url: str, index: int, log: Path, deadline: Deadline) -> Any:
    proc = spawn(
        python_argv("-m", "bench.peers.dbos_lane", "worker", database_url, f"worker-{index}"),
        env=os.environ,
        log=log,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"DBOS worker {index} exited ({proc.returncode}); see {log}")
        return READY_LINE in log.read_text(errors="replace")

    wait_until(ready, deadline=deadline, what=f"DBOS worker {index} did not launch")
    return proc


# -- the run's database ---------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path=f"/{name}").geturl()


def _admin(database_url: str, statement: sql.Composed) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(statement)


def _create_database(database_url: str) -> str:
    name = f"dbos_bench_{uuid.uuid4().hex[:10]}"
    _admin(database_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def _drop_database(database_url: str, name: str) -> None:
    """Drop the run's database. FORCE ends the run's own sessions, but not an autovacuum worker
    that happens to be in it (a superuser's process): that one finishes in moments, so retry."""
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    deadline = Deadline(f"dropping {name}", 15)
    while True:
        try:
            _admin(database_url, statement)
            return
        except psycopg.errors.InsufficientPrivilege:
            if deadline.left() <= 0:
                print(f"bench: left database {name} behind (still in use)", file=sys.stderr)
                return
            time.sleep(0.2)


# -- the driver -----------------------------------------------------------------------------------


class _Collector:
    """Enqueues goals through a DBOSClient and polls their status rows in one query per round."""

    def __init__(self, client: DBOSClient, shape: str, window: Window) -> None:
        self.client = client
        self.workflow = CHAIN_WORKFLOW if shape == "chain" else FANOUT_WORKFLOW
        self.window = window
        self.overheads: list[float] = []

    def submit(self, _index: int) -> str:
        handle: WorkflowHandle[list[Any]] = self.client.enqueue(
            {"workflow_name": self.workflow, "queue_name": GOAL_QUEUE}, time.time()
        )
        return handle.get_workflow_id()

    def collect(self, outstanding: list[str]) -> None:
        finished = self.client.list_workflows(
            workflow_ids=outstanding, status=["SUCCESS", "ERROR"], load_input=False
        )
        seen = time.perf_counter()
        for status in finished:
            if status.status != "SUCCESS":
                raise RuntimeError(f"DBOS goal {status.workflow_id} failed: {status.error!r}")
            output = status.output
            if not isinstance(output, list):
                raise RuntimeError(f"DBOS goal {status.workflow_id} returned {output!r}")
            self.overheads.extend(output[1])
            self.window.done(status.workflow_id, output[0], at=seen)
        if not finished:
            time.sleep(RESULT_POLL_S)


def _drive(
    client: DBOSClient,
    shape: str,
    goals: int,
    in_flight: int,
    deadline: Deadline,
    rate: float | None = None,
) -> tuple[Window, _Collector]:
    window = offered(shape=shape, goals=goals, in_flight=in_flight, deadline=deadline, rate=rate)
    collector = _Collector(client, shape, window)
    window.run(collector.submit, collector.collect)
    return window, collector


def _measure(
    url: str,
    shape: str,
    goals: int,
    in_flight: int,
    procs: list[Any],
    deadline: Deadline,
    rate: float | None,
) -> tuple[float, Window, _Collector, list[ProcessUsage]]:
    client = DBOSClient(system_database_url=url)
    try:
        _drive(client, shape, 1, 1, deadline)  # warm-up: imports, connections, queue threads
        driver = DriverUsage("dbos-driver")
        tree, infra = TreeUsage(procs, "dbos-worker"), InfraUsage(uses=("postgres",))
        began = time.perf_counter()
        window, collector = _drive(client, shape, goals, in_flight, deadline, rate)
        wall = time.perf_counter() - began
        return wall, window, collector, [*tree.finish(), driver.finish(), *infra.finish()]
    finally:
        client.destroy()


def run_dbos(
    *,
    database_url: str,
    shape: str,
    goals: int,
    in_flight: int,
    workers: int = 2,
    rate: float | None = None,
) -> LaneRun:
    """Run `goals` goals of `shape` as DBOS workflows served by `workers` worker processes."""
    tasks_per_goal(shape)
    deadline = Deadline("the DBOS lane")
    name = _create_database(database_url)
    url = _with_database(database_url, name)
    log = Path(tempfile.gettempdir()) / f"bench-{name}.log"
    procs: list[Any] = []
    try:
        # One at a time: the first launch creates DBOS's schema, the others find it there.
        for index in range(workers):
            procs.append(_start_worker(url, index, log, deadline))
        wall, window, collector, processes = _measure(
            url, shape, goals, in_flight, procs, deadline, rate
        )
    except LaneTimeout as error:
        raise LaneTimeout(f"{error}; worker log: {log}") from error
    finally:
        for proc in procs:
            stop(proc)
        _drop_database(database_url, name)
    with contextlib.suppress(OSError):
        log.unlink()
    return LaneRun(
        lane="dbos",
        shape=shape,
        goals=goals,
        tasks=goals * tasks_per_goal(shape),
        load=window.load,
        wall_s=wall,
        goal_latencies_s=window.latencies,
        task_overheads_s=collector.overheads,
        processes=processes,
        durability=DURABILITY,
        notes=f"{NOTES}; in_flight {in_flight}, {workers} worker processes",
    )


def _demo() -> None:
    import json  # noqa: PLC0415 - only the demo prints

    from bench.stats import summary  # noqa: PLC0415

    url = os.environ.get("DATABASE_URL", "postgresql://mesh@127.0.0.1:5432/mesh")
    for shape, count, flight in (("chain", 50, 1), ("fanout", 50, 1), ("chain", 200, 32)):
        run = run_dbos(database_url=url, shape=shape, goals=count, in_flight=flight)
        data = run.as_json()
        data["goal_latencies_s"] = summary(run.goal_latencies_s)
        data["task_overheads_s"] = summary(run.task_overheads_s)
        print(json.dumps(data, indent=1))


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["worker"]:
        worker_main(sys.argv[2], sys.argv[3])
    else:
        _demo()
