"""The raw ceiling (R0) and the real mesh (M), on the same broker and message sizes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    Producer,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from agents import events as ev
from agents.runtime.app import group_id
from agents.runtime.fleet import Fleet
from agents.runtime.kafka import (
    client_config,
    consumer_config,
    fetch,
    groups_settled,
    producer_config,
    watermarks,
)
from agents.runtime.publisher import Publisher
from agents.runtime.settings import MeshSettings
from bench.driver import SHAPES, Deadline, Window, offered
from bench.model import LaneRun, ProcessUsage
from bench.procs import InfraUsage, self_usage, since, usage
from bench.profile import sampling
from schemas.codec import Codec
from topics.admin import delete_topics, drop, ensure

TIMEOUT_S = 300.0


def _task(goal_id: str) -> ev.TaskAssigned:
    return ev.TaskAssigned(
        envelope=ev.Envelope(goal_id=goal_id),
        task_id=ev.new_id(),
        plan_version=1,
        step_id="s0",
        tool="echo",
        arguments={"value": 0},
        idempotency_key=ev.new_id(),
    )


def _task_payload() -> bytes:
    """A TaskAssigned as the mesh encodes it: the raw lanes move records of the same size."""
    return Codec().encode(_task(ev.new_id()))


# -- R0: the raw relay ------------------------------------------------------------------------


def run_raw(
    settings: MeshSettings,
    *,
    shape: str,
    goals: int,
    in_flight: int,
    log_dir: Path,
    avro: bool = False,
    rate: float | None = None,
) -> LaneRun:
    """Three hops per task (task, result, verdict) through two relay processes; the driver
    plays the planner. No database. R0 moves bytes; R1 (``avro``) also decodes every record and
    encodes the next event, as the mesh's roles do."""
    flags = ["--avro"] if avro else []
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    names = [f"{prefix}{n}" for n in ("tasks", "results", "verdicts")]
    admin = AdminClient(client_config(settings, client_id="bench"))
    for future in admin.create_topics([NewTopic(n, 12, 1) for n in names]).values():
        future.result()
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers}
    relays = [
        _spawn(
            ["-m", "bench.relay", names[0], names[1], f"{prefix}worker", *flags],
            env,
            log_dir / "relay-1.log",
        ),
        _spawn(
            ["-m", "bench.relay", names[1], names[2], f"{prefix}evaluator", *flags],
            env,
            log_dir / "relay-2.log",
        ),
    ]
    try:
        driver = _RawDriver(settings, names, shape, Codec() if avro else None)
        return _drive_raw(
            driver,
            "R1" if avro else "R0",
            shape=shape,
            goals=goals,
            in_flight=in_flight,
            rate=rate,
            relays=relays,
            groups=[f"{prefix}worker", f"{prefix}evaluator"],
        )
    finally:
        _stop(relays)
        delete_topics(admin, names, timeout=settings.connect_timeout_s)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


class _RawDriver:
    """Plays the planner for the raw lane: sends tasks, counts verdicts, times round trips."""

    def __init__(
        self, settings: MeshSettings, names: list[str], shape: str, codec: Codec | None
    ) -> None:
        self.settings = settings
        self._codec = codec  # R1: encode every task, decode every verdict
        self._names = names
        self._shape = shape
        self._per_goal = SHAPES[shape]
        self._payload = _task_payload()
        self._producer = Producer(producer_config(settings, client_id="bench-driver"))
        self.consumer = Consumer(
            consumer_config(settings, client_id="bench-driver", group_id=f"{names[0]}-driver")
        )
        self.consumer.subscribe([names[2]])
        self._progress: dict[str, int] = {}
        self.overheads: list[float] = []

    def _send(self, goal_id: str, step: int) -> None:
        now = str(time.perf_counter()).encode()
        key = f"{goal_id}:{step}".encode()
        payload = self._payload if self._codec is None else self._codec.encode(_task(goal_id))
        self._producer.produce(self._names[0], payload, key, headers=[("t", now)])

    def submit(self, n: int) -> str:
        goal_id = f"g{n}"
        self._progress[goal_id] = 0
        for step in range(1 if self._shape == "chain" else self._per_goal):
            self._send(goal_id, step)
        self._producer.poll(0)
        return goal_id

    def poll(self) -> list[str]:
        self._producer.flush()
        finished = []
        for message in fetch(self.consumer, 1000, 0.05):
            if message.error():
                continue
            goal_id = (message.key() or b":").decode().split(":")[0]
            if self._codec is not None:
                self._codec.decode(message.value())
            sent = _header(message.headers(), "t")
            self.overheads.append(time.perf_counter() - float(sent))
            self._progress[goal_id] += 1
            if self._progress[goal_id] == self._per_goal:
                finished.append(goal_id)
            elif self._shape == "chain":
                self._send(goal_id, self._progress[goal_id])
        return finished


def _header(headers: Any, name: str) -> str:
    for key, value in headers or []:
        if key == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def _drive_raw(
    driver: _RawDriver,
    lane: str,
    *,
    shape: str,
    goals: int,
    in_flight: int,
    rate: float | None,
    relays: list[subprocess.Popen[bytes]],
    groups: list[str],
) -> LaneRun:
    _warm_up(driver.submit, driver.poll)
    deadline = Deadline(lane, TIMEOUT_S)
    flight = offered(shape=shape, goals=goals, in_flight=in_flight, deadline=deadline, rate=rate)
    driver.overheads.clear()

    def sample() -> list[ProcessUsage]:
        return [usage(p.pid, f"relay-{i + 1}") for i, p in enumerate(relays)] + [
            self_usage("driver")
        ]

    before, infra = sample(), InfraUsage(uses=("kafka",))
    wall = flight.run_polling(lambda n: driver.submit(n + 1_000_000), driver.poll)
    procs = since(before, sample()) + infra.finish()
    driver.consumer.close()
    return _result(
        lane,
        shape,
        flight,
        wall,
        overheads=driver.overheads,
        processes=procs,
        durability="acks=all, idempotent producer, offsets stored after delivery",
        end_lag=_end_lag(driver.settings, groups),
    )


def _result(
    lane: str,
    shape: str,
    flight: Window,
    wall: float,
    *,
    overheads: list[float],
    processes: list[ProcessUsage],
    durability: str,
    end_lag: int,
    stages: dict[str, list[float]] | None = None,
) -> LaneRun:
    return LaneRun(
        lane=lane,
        shape=shape,
        goals=flight.goals,
        tasks=flight.goals * SHAPES[shape],
        load=flight.load,
        wall_s=wall,
        goal_latencies_s=flight.latencies,
        task_overheads_s=overheads,
        processes=processes,
        durability=durability,
        end_lag=end_lag,
        stages=stages or {},
    )


def _warm_up(submit: Any, poll: Any) -> None:
    """One goal through every hop first, so group joins are not in the measurement."""
    Window(goals=1, in_flight=1, deadline=Deadline("the warm-up", 60)).run_polling(submit, poll)


# -- M: the mesh ------------------------------------------------------------------------------


def run_mesh(
    settings: MeshSettings,
    *,
    shape: str,
    goals: int,
    in_flight: int,
    workers: int,
    log_dir: Path,
    trace_ratio: float | None = None,
    rate: float | None = None,
    relays: bool = False,
    profile: tuple[str, Path] | None = None,
) -> LaneRun:
    """The real planner, workers and evaluator processes, ledger and all; tools are instant.
    Every goal is traced, or (``trace_ratio``) that share of goals, as under load in production.
    ``profile``: a process's name and a file for py-spy's samples of it while goals run.

    With ``relays`` this is R2: R1's Avro relays stand in for the worker and the evaluator, so
    what is added to R1 is the planner with its ledger (inbox, batch snapshot, set-wise writes,
    outbox), and no Redis, tool or judgement work."""
    settings = settings.model_copy(update={"topic_prefix": f"bench.{uuid.uuid4().hex[:8]}."})
    ensure(settings)
    traces = log_dir / "traces.jsonl"
    traces.unlink(missing_ok=True)  # the last run's spans only: a full run writes gigabytes
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "MESH_TOPIC_PREFIX": settings.topic_prefix,
        "MESH_TRACE_FILE": str(traces),
    }
    if trace_ratio is not None:  # the OpenTelemetry SDK's own switches
        env |= {
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(trace_ratio),
        }
    fleet = Fleet(env=env, log_dir=log_dir)
    fleet.add("planner", "planner")
    if relays:
        workers, lane = 1, "R2"
    else:
        for n in range(workers):
            fleet.add(f"worker-{n + 1}", "worker")
        fleet.add("evaluator", "evaluator")
        lane = "M" if trace_ratio is None else f"M-{trace_ratio:.0%}"
    groups = {"planner": 1, "worker-all": workers, "evaluator": 1}
    stand_ins = _stand_ins(settings.topic_prefix, env, log_dir) if relays else {}
    try:
        with fleet:
            _wait_for_groups(
                settings, {group_id(settings.topic_prefix, g): n for g, n in groups.items()}
            )
            with _profiled(fleet, profile):
                return _drive_mesh(
                    settings,
                    fleet,
                    lane=lane,
                    shape=shape,
                    goals=goals,
                    in_flight=in_flight,
                    rate=rate,
                    extra=stand_ins,
                    groups=[group_id(settings.topic_prefix, g) for g in groups],
                )
    finally:
        _stop(list(stand_ins.values()))
        drop(settings)
        _forget_goals(settings)


def _profiled(fleet: Fleet, profile: tuple[str, Path] | None) -> AbstractContextManager[None]:
    """py-spy sampling the named member while the block runs (``profile``), or nothing."""
    if profile is None:
        return nullcontext()
    name, raw = profile
    member = next(m for m in fleet.members if m.name == name)
    assert member.proc is not None  # started with the fleet
    return sampling(member.proc.pid, raw)


# What a lane's goals leave in the ledger (VACUUM takes no parameters, so the names are fixed).
LEDGER_TABLES = ("goals", "plans", "tasks", "attempts", "verdicts", "outbox", "inbox")


def _forget_goals(settings: MeshSettings) -> None:
    """Delete the lane's goals from the ledger (their plans, tasks, attempts and verdicts go with
    them) and its planner's inbox rows: like topics left behind, a ledger grown by every earlier
    run makes each later run slower (a full run adds some 25,000 goals, 150,000 tasks and
    350,000 inbox rows). The tables are vacuumed then, so the autovacuum those deletes call for
    does not run during the next lane's measured run."""
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("delete from goals where mesh = %s", (settings.topic_prefix,))
            planner = group_id(settings.topic_prefix, "planner")
            conn.execute("delete from inbox where consumer = %s", (planner,))
        conn.execute(f"vacuum {', '.join(LEDGER_TABLES)}")


def _stand_ins(
    prefix: str, env: dict[str, str], log_dir: Path
) -> dict[str, subprocess.Popen[bytes]]:
    """R1's relays in the worker's and the evaluator's consumer groups and places: tasks become
    results, results become verdicts on the same topic (the relay drops what is not its input)."""
    hops = {"worker": ("tasks", "worker-all"), "evaluator": ("results", "evaluator")}
    return {
        f"relay-{role}": _spawn(
            ["-m", "bench.relay", prefix + source, prefix + "results", prefix + group, "--avro"],
            env,
            log_dir / f"relay-{role}.log",
        )
        for role, (source, group) in hops.items()
    }


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
        proc.wait(15)


def _end_lag(settings: MeshSettings, groups: list[str], settle_s: float = 3.0) -> int:
    """Records the lane's consumer groups have not committed when the run ends, summed over
    their partitions. Offsets are committed every 200 ms, so this asks again until nothing is
    left or ``settle_s`` has passed, and reports what is left then."""
    admin = AdminClient(client_config(settings, client_id="bench"))
    probe = Consumer(consumer_config(settings, client_id="bench", group_id="bench-lag-probe"))
    ends = time.monotonic() + settle_s
    try:
        while True:
            lag = sum(_group_lag(admin, probe, group) for group in groups)
            if lag == 0 or time.monotonic() >= ends:
                return lag
            time.sleep(0.1)
    finally:
        probe.close()


def _group_lag(admin: AdminClient, probe: Consumer, group: str) -> int:
    request = [ConsumerGroupTopicPartitions(group)]
    committed = admin.list_consumer_group_offsets(request)[group].result().topic_partitions
    lag = 0
    for tp in committed or []:
        if tp.offset >= 0:
            _, high = watermarks(probe, tp.topic, tp.partition)
            lag += max(0, high - tp.offset)
    return lag


def _wait_for_groups(settings: MeshSettings, members: dict[str, int]) -> None:
    """Until every consumer group has all its members, each with partitions: a rebalance during
    the run belongs to start-up, not to the tasks measured."""
    admin = AdminClient(client_config(settings, client_id="bench"))
    deadline = Deadline("the mesh's consumer groups to settle", 60)
    while not groups_settled(admin, members, assigned=True):
        deadline.check()
        time.sleep(0.1)


def _goal_input(shape: str) -> dict[str, Any]:
    count = SHAPES[shape]
    steps = [
        {
            "id": f"s{n}",
            "tool": "echo",
            "arguments": {"value": n},
            "depends_on": [f"s{n - 1}"] if shape == "chain" and n else [],
        }
        for n in range(count)
    ]
    return {"playbook": "steps", "steps": steps}


def _drive_mesh(
    settings: MeshSettings,
    fleet: Fleet,
    *,
    lane: str,
    shape: str,
    goals: int,
    in_flight: int,
    rate: float | None,
    extra: dict[str, subprocess.Popen[bytes]],
    groups: list[str],
) -> LaneRun:
    codec = Codec()
    publisher = Publisher(settings=settings, codec=codec, client_id="bench-driver")
    consumer = Consumer(
        consumer_config(
            settings, client_id="bench-driver", group_id=f"{settings.topic_prefix}driver"
        )
    )
    consumer.subscribe([f"{settings.topic_prefix}results"])
    goal_input = _goal_input(shape)
    ids: list[str] = []

    def submit(n: int) -> str:
        goal_id = ev.new_id()
        publisher.publish(
            ev.GoalSubmitted(
                envelope=ev.Envelope(goal_id=goal_id), text="bench", input=goal_input, max_steps=100
            )
        )
        publisher.flush()
        ids.append(goal_id)
        return goal_id

    def poll() -> list[str]:
        finished = []
        for message in fetch(consumer, 1000, 0.05):
            if message.error():
                continue
            kind = _header(message.headers(), "mesh-type")
            if kind == "mesh.GoalCompleted":
                finished.append(codec.decode(message.value()).goal_id)
            elif kind == "mesh.GoalFailed":
                raise RuntimeError(f"a benchmark goal failed: {codec.decode(message.value())}")
        return finished

    _warm_up(submit, poll)
    warm = list(ids)
    deadline = Deadline(lane, TIMEOUT_S)
    flight = offered(shape=shape, goals=goals, in_flight=in_flight, deadline=deadline, rate=rate)

    def sample() -> list[ProcessUsage]:
        mesh = [usage(m.proc.pid, m.name) for m in fleet.members if m.proc]
        return mesh + [usage(p.pid, name) for name, p in extra.items()] + [self_usage("driver")]

    before, infra = sample(), InfraUsage(uses=("kafka", "postgres", "redis"))
    wall = flight.run_polling(submit, poll)
    procs = since(before, sample()) + infra.finish()
    consumer.close()
    overheads, stages = _timings(settings, [i for i in ids if i not in warm])
    return _result(
        lane,
        shape,
        flight,
        wall,
        overheads=overheads,
        stages=stages,
        processes=procs,
        durability="ledger commit per batch (fsync on), outbox, acks=all, idempotent producer",
        end_lag=_end_lag(settings, list(groups)),
    )


STAGES = ("dispatch→start", "tool", "finish→verdict")
"""Where a mesh task's time goes, from the ledger's timestamps: the planner's batch (from the
start of the transaction that dispatched it) with its commit, relay and the hop to a worker
that starts the tool; the tool; the hop to the evaluator, its verdict and the hop back to the
planner's batch that records it."""


def _timings(
    settings: MeshSettings, goal_ids: list[str]
) -> tuple[list[float], dict[str, list[float]]]:
    """Per attempt: dispatch → verdict with the tool's own run time excluded (the overhead), and
    the three stages of ``STAGES``, from the ledger."""
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        rows = conn.execute(
            "select extract(epoch from a.started_at - a.dispatched_at), "
            "extract(epoch from a.finished_at - a.started_at), "
            "extract(epoch from v.created_at - a.finished_at) "
            "from attempts a join tasks t using (task_id) "
            "join verdicts v on v.task_id = a.task_id and v.attempt = a.attempt "
            "where t.goal_id = any(%s)",
            (goal_ids,),
        ).fetchall()
    complete = [tuple(float(x) for x in row) for row in rows if None not in row]
    stages = {name: [row[i] for row in complete] for i, name in enumerate(STAGES)}
    return [row[0] + row[2] for row in complete], stages
