"""One chaos run end to end: its own topics, sandbox and agents, the goals under faults, a quiet
period, the observations and the verdict. Everything it starts it stops, on error too."""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psycopg
import redis
from confluent_kafka.admin import AdminClient

from agents.client import MeshClient
from agents.ledger.migrate import migrate
from agents.runtime.app import group_id
from agents.runtime.fleet import Fleet
from agents.runtime.kafka import client_config, groups_settled
from agents.runtime.services import check_all
from agents.runtime.settings import MeshSettings
from chaos._campaign import TICK_S, Campaign, Goal
from chaos._faults import FaultKind, FaultPlan, Faults
from chaos._observe import (
    Conn,
    ResultsLog,
    effect_rows,
    ledger_goals,
    outbox_backlog,
    tenant_components,
)
from chaos._scenarios import Customer, longest_delay_s, mix
from chaos._verdict import ChaosReport, Observed, Tally, summarise
from topics.admin import drop, ensure

log = logging.getLogger(__name__)

# One planner, two workers, one evaluator: (process name, role).
AGENTS = (
    ("planner", "planner"),
    ("worker-1", "worker"),
    ("worker-2", "worker"),
    ("evaluator", "evaluator"),
)
GROUPS = {"planner": 1, "worker-all": 2, "evaluator": 1}  # consumer groups and their members
READY_TIMEOUT_S = 60.0
PAUSE_OVER_TTL_S = 2.0  # a pause outlasts the lease by this, so the watchdog must act


@dataclass(frozen=True)
class ChaosConfig:
    """What a run does; every field has the default ``make chaos`` uses."""

    goals: int = 300
    kill_every: float = 3.0  # seconds between faults; 0: no faults
    seed: int | None = None  # None: a fresh one, reported so the run's choices can be repeated
    pause_ratio: float = 0.2  # the share of faults that are pauses rather than kills
    lease_ttl: float = 3.0  # the agents' MESH_LEASE_TTL_S
    timeout: float | None = None  # for every goal to end; None: scaled with ``goals``
    in_flight: int = 100  # goals running at once: they mostly wait (slow tools, backoffs, humans)
    window_age_s: float = 300.0  # a goal this old stops holding a place among those in flight
    quiet_max_s: float = 60.0  # the longest the mesh gets to settle once the faults stopped
    out_dir: Path | None = None  # where runs keep their files; None: <MESH_DATA_DIR>/chaos

    @property
    def deadline_s(self) -> float:
        """The time every goal gets to end: a base for the slowest scenario under faults (the
        slow tool needs three whole 10 s attempts, and faults cut many short), and room for each
        goal: with a fault every 3 s the mesh ends about one goal in 4 to 6 s, as the single
        planner and evaluator are down for a session timeout after each kill of theirs."""
        return self.timeout if self.timeout is not None else 300.0 + 6.0 * self.goals

    @property
    def pause_s(self) -> float:
        return self.lease_ttl + PAUSE_OVER_TTL_S


@dataclass(frozen=True)
class RunPaths:
    """A run's own folder: agent logs, sandbox, traces, details."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def sandbox(self) -> Path:
        return self.root / "sandbox"

    @property
    def details(self) -> Path:
        return self.root / "details.json"


def default_out_dir() -> Path:
    return Path(os.environ.get("MESH_DATA_DIR", ".mesh")) / "chaos"


def run_chaos(config: ChaosConfig, settings: MeshSettings | None = None) -> ChaosReport:
    """Run ``config.goals`` goals under faults on the services ``settings`` names (the
    environment's by default) and judge them. Creates and drops topics of its own; raises
    ``ConfigError`` when a service does not answer."""
    seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
    config = replace(config, seed=seed)
    run_id = uuid.uuid4().hex[:8]
    paths = RunPaths((config.out_dir or default_out_dir()) / run_id)
    base = settings or MeshSettings()
    mine = base.model_copy(update={"topic_prefix": f"chaos.{run_id}."})
    check_all(mine)
    migrate(mine.database_url.get_secret_value())
    paths.root.mkdir(parents=True, exist_ok=True)
    log.info("run %s (seed %d): %d goals; files in %s", run_id, seed, config.goals, paths.root)
    try:
        ensure(mine)
        report, faults = _run(config, mine, paths, run_id)
    finally:
        drop(mine)
    _write_details(paths, config, run_id, report, faults)
    return report


def _run(
    config: ChaosConfig, settings: MeshSettings, paths: RunPaths, run_id: str
) -> tuple[ChaosReport, Faults]:
    assert config.seed is not None
    fleet = _fleet(settings, paths, config)
    url = settings.database_url.get_secret_value()
    with (
        fleet,
        MeshClient(settings) as client,
        ResultsLog(settings) as results,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        _wait_ready(settings)
        plan = FaultPlan(config.kill_every, config.pause_ratio, config.pause_s)
        faults = Faults(fleet.members, plan, random.Random(config.seed))
        with _resumed(faults):
            goals = [
                Goal(scenario, Customer.numbered(run_id, n))
                for n, scenario in enumerate(mix(config.goals, config.seed))
            ]
            campaign = Campaign(
                client=client,
                conn=conn,
                results=results,
                faults=faults,
                goals=goals,
                in_flight=config.in_flight,
                window_age_s=config.window_age_s,
            )
            observed, tally = _phases(campaign, faults, conn, results, settings, paths, config)
    return summarise(observed, tally, seed=config.seed), faults


def _phases(
    campaign: Campaign,
    faults: Faults,
    conn: Conn,
    results: ResultsLog,
    settings: MeshSettings,
    paths: RunPaths,
    config: ChaosConfig,
) -> tuple[list[Observed], Tally]:
    """Goals under faults until they ended or the deadline, then a quiet period, then a look."""
    started = time.monotonic()
    campaign.run(started + config.deadline_s)
    in_time = {g.goal_id for g in campaign.goals if g.ended}
    faults.calm()
    _quiet(campaign, conn, settings, config.quiet_max_s)
    if not results.read_to_end():
        log.warning("the results topic was not read to its end; its checks may be short")
    observed = _observe(conn, results, paths, campaign.goals, in_time)
    return observed, _tally(campaign, faults, time.monotonic() - started)


def _fleet(settings: MeshSettings, paths: RunPaths, config: ChaosConfig) -> Fleet:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "MESH_TOPIC_PREFIX": settings.topic_prefix,
        "MESH_SANDBOX_DIR": str(paths.sandbox),
        "MESH_TRACE_FILE": str(paths.root / "traces.jsonl"),
        "MESH_LEASE_TTL_S": str(config.lease_ttl),
    }
    fleet = Fleet(env=env, log_dir=paths.logs)
    for name, role in AGENTS:
        # Static membership: a restarted agent resumes its partitions without a rebalance.
        fleet.add(name, role, env={"MESH_INSTANCE": name})
    return fleet


def _wait_ready(settings: MeshSettings) -> None:
    """Return once every consumer group is stable with all its members: goals submitted while
    groups still form would wait out their rebalances, which is not a fault of the run's."""
    admin = AdminClient(client_config(settings, client_id="chaos-groups"))
    groups = {group_id(settings.topic_prefix, g): n for g, n in GROUPS.items()}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not groups_settled(admin, groups, assigned=False):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agents' consumer groups did not settle: {groups}")
        time.sleep(0.2)


@contextmanager
def _resumed(faults: Faults) -> Iterator[None]:
    """Whatever happens, no agent stays stopped: a SIGSTOPped process cannot take the SIGTERM
    that ends the fleet."""
    try:
        yield
    finally:
        faults.resume_paused()


def _quiet(campaign: Campaign, conn: Conn, settings: MeshSettings, most_s: float) -> bool:
    """With the faults over, let the mesh settle: its outbox relayed, no task leased, and every
    ended goal's end on the results topic. Waits at least as long as the slowest simulated call,
    whose effect can land after the worker gave up on it. False if ``most_s`` ran out."""
    leases = redis.Redis.from_url(settings.redis_url.get_secret_value())
    key = f"{settings.topic_prefix}leases"
    started = time.monotonic()
    try:
        while True:
            campaign.steer(inject=False)
            unsettled = {
                "outbox records": outbox_backlog(conn, settings.topic_prefix),
                "leased tasks": int(leases.zcard(key)),
                "ended goals not on the results topic": sum(
                    1 for g in campaign.goals if g.ended and not campaign.logged(g)
                ),
            }
            waited = time.monotonic() - started
            if waited >= longest_delay_s() and not any(unsettled.values()):
                return True
            if waited > most_s:
                left = ", ".join(f"{n} {what}" for what, n in unsettled.items() if n)
                log.warning("the mesh did not settle within %gs: %s", most_s, left)
                return False
            time.sleep(TICK_S)
    finally:
        leases.close()


def _observe(
    conn: Conn,
    results: ResultsLog,
    paths: RunPaths,
    goals: Sequence[Goal],
    in_time: set[str | None],
) -> list[Observed]:
    ids = [g.goal_id for g in goals if g.goal_id is not None]
    rows = ledger_goals(conn, ids)
    effects = effect_rows(conn, ids)
    observed = []
    for n, goal in enumerate(goals):
        goal_id = goal.goal_id or f"unsubmitted-{n}"
        row = rows.get(goal_id)
        observed.append(
            Observed(
                goal_id=goal_id,
                scenario=goal.scenario,
                slug=goal.customer.slug,
                status=row.status if row else goal.status,
                ended_in_time=goal.goal_id in in_time,
                compensation_policy=row.compensation_policy if row else "all",
                rows=effects.get(goal_id, {}),
                tenant_components=tenant_components(paths.sandbox, goal.customer.slug),
                log_ends=results.ends(goal_id),
            )
        )
    return observed


def _tally(campaign: Campaign, faults: Faults, elapsed: float) -> Tally:
    return Tally(
        kills=faults.count(FaultKind.KILL),
        pauses=faults.count(FaultKind.PAUSE),
        crashes=faults.count(FaultKind.CRASH),
        answered=campaign.answered,
        unexpected_escalations=campaign.unexpected,
        cancels=campaign.cancels,
        elapsed_s=round(elapsed, 1),
    )


def _write_details(
    paths: RunPaths, config: ChaosConfig, run_id: str, report: ChaosReport, faults: Faults
) -> None:
    document = {
        "run_id": run_id,
        "config": asdict(config),
        "line": report.line(),
        **report.as_json(),
        "faults": [asdict(r) for r in faults.records],
    }
    paths.details.write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
