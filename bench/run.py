"""``make bench``: every lane on the same broker, shapes and message sizes, in one run.

    python -m bench.run [--quick] [--out bench-results]

Lanes alternate per shape, so drift on a shared machine hits them alike. Writes a table to the
terminal, ``results.json`` and ``results.png`` under the output folder. Benchmarks report; they
never fail a test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient

from agents.runtime.kafka import client_config
from agents.runtime.services import check_all
from agents.runtime.settings import MeshSettings
from bench.driver import SHAPES
from bench.lanes import run_mesh, run_raw
from bench.model import LaneRun, load_label
from bench.procs import speed_probe
from bench.profile import Profile, summarise
from bench.report import PEERS, find_run, process_table, ratios, render_png, stage_table, table
from bench.stats import percentile
from bench.targets import BENCH_CLIENT, render, targets
from topics.catalogue import CATALOGUE

# Worker processes in each lane's main runs, each lane at its best on this machine (measured in
# alternating pairs, docs/benchmarks.md "Lanes"): the mesh runs its tools in the worker's
# threads, and with instant tools a second worker process only adds a consumer that the broker
# answers; Celery and DBOS do better with two.
MESH_WORKERS = 1
PEER_WORKERS = 2


@dataclass(frozen=True)
class Plan:
    single_goals: int
    saturation_goals: dict[str, int]
    # Goals in flight at saturation, each lane at the count it moves the most tasks with here
    # (docs/benchmarks.md, "Goals in flight"): the Kafka lanes batch more the more is in flight
    # (the mesh's chains 470-630 tasks/s with 200, 750-1,000 with 500 to 2,000; R0 5,500-6,100
    # with 200, 9,200-10,200 with 1,000), Celery and DBOS do less with more than 200.
    in_flight: int
    peer_in_flight: int
    workers: tuple[int, ...]
    # The goal-count series: the mesh's chains once more with each of these many goals.
    goal_series: tuple[int, ...] = ()
    # Fixed offered rates, as shares of R0's saturation throughput on chains, for these lanes.
    rates: tuple[float, ...] = ()
    rate_lanes: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()  # lanes this plan leaves out
    half_load_lanes: tuple[str, ...] = ()  # offered half their own chain saturation rate


QUICK = Plan(
    single_goals=3,
    saturation_goals={"chain": 100, "fanout": 20},
    in_flight=50,
    peer_in_flight=50,
    workers=(MESH_WORKERS,),
    # The quick run keeps to the lanes and loads the ratios compare: M-1% is a variant of M, R1
    # and R2 are the steps between R0 and M, and the offered rates are the full run's.
    skip=("M-1%", "R1", "R2"),
)
FULL = Plan(
    single_goals=40,
    saturation_goals={"chain": 2000, "fanout": 150},
    in_flight=1000,
    peer_in_flight=200,
    workers=(1, 2, 4),
    goal_series=(1_000, 10_000),
    rates=(0.1, 0.5, 0.9),
    # R1 and R2 (the steps between R0 and M) only at saturation: the run stays under 15 minutes.
    rate_lanes=("R0", "M", "M-1%", "celery", "dbos"),
    half_load_lanes=("M", "M-1%", "celery", "dbos"),
)
# At most this many goals per offered-rate run: a lane that cannot keep up shows it as a queue
# within a few hundred goals, and working through a longer queue only lengthens the run.
RATE_GOALS_MAX = 500
RATE_RUN_S = 3.0  # how long goals are offered at a fixed rate
HALF = 0.5
FOREIGN_PARTITIONS_WARN = 100  # a few test runs' worth
INBOX_ROWS_WARN = 500_000  # about one full run's worth of planner events
WARM_UP_RUNS = 5
WARM_UP_AGREE = 0.15  # two warm-up runs this close (a share of the faster) end the warm-up

Lane = Callable[..., LaneRun]


def _lanes(settings: MeshSettings, logs: Path) -> dict[str, Lane]:
    lanes: dict[str, Lane] = {
        "R0": lambda **kw: run_raw(settings, log_dir=logs / "r0", **kw),
        "R1": lambda **kw: run_raw(settings, log_dir=logs / "r1", avro=True, **kw),
        "R2": lambda **kw: run_mesh(settings, workers=1, log_dir=logs / "r2", relays=True, **kw),
        "M": lambda workers=MESH_WORKERS, **kw: run_mesh(
            settings, workers=workers, log_dir=logs / "m", **kw
        ),
        # The same mesh tracing 1% of goals (head sampling), as a loaded deployment would.
        "M-1%": lambda workers=MESH_WORKERS, **kw: run_mesh(
            settings, workers=workers, log_dir=logs / "m1", trace_ratio=0.01, **kw
        ),
    }
    lanes.update(_peers(settings))
    return lanes


def _peers(settings: MeshSettings) -> dict[str, Lane]:
    """Celery and DBOS, when their optional packages are installed (``pip install .[bench]``)."""
    peers: dict[str, Lane] = {}
    try:
        from bench.peers.celery_lane import run_celery  # noqa: PLC0415

        redis_url = settings.redis_url.get_secret_value()
        peers["celery"] = lambda workers=PEER_WORKERS, **kw: run_celery(
            redis_url=redis_url, workers=workers, **kw
        )
    except ImportError as exc:
        print(f"bench: no Celery lane ({exc})", file=sys.stderr)
    try:
        from bench.peers.dbos_lane import run_dbos  # noqa: PLC0415

        db_url = settings.database_url.get_secret_value()
        peers["dbos"] = lambda workers=PEER_WORKERS, **kw: run_dbos(
            database_url=db_url, workers=workers, **kw
        )
    except ImportError as exc:
        print(f"bench: no DBOS lane ({exc})", file=sys.stderr)
    return peers


def run(plan: Plan, out: Path, settings: MeshSettings) -> tuple[list[LaneRun], Profile | None]:
    lanes = {k: v for k, v in _lanes(settings, out / "logs").items() if k not in plan.skip}
    _warm_up(plan, lanes["R0"])
    runs: list[LaneRun] = []
    for shape in ("chain", "fanout"):
        for name, lane in lanes.items():  # lanes alternate within each shape and load
            runs.append(_one(name, lane, shape=shape, goals=plan.single_goals, in_flight=1))
        for name, lane in lanes.items():
            goals = plan.saturation_goals[shape]
            flight = lane_in_flight(plan, name)
            runs.append(_one(name, lane, shape=shape, goals=goals, in_flight=flight))
    runs += _offered_rates(plan, lanes, ceiling=_saturated(runs, "R0", "chain"))
    runs += _half_loads(plan, lanes, runs)
    for workers in plan.workers:
        if workers != MESH_WORKERS:  # the scaling series: the mesh with 2 and 4 workers besides 1
            goals = plan.saturation_goals["chain"]
            runs.append(
                _one(
                    "M",
                    lanes["M"],
                    series="workers",
                    note=f"{workers} workers",
                    shape="chain",
                    goals=goals,
                    in_flight=plan.in_flight,
                    workers=workers,
                )
            )
    for goals in plan.goal_series:
        runs.append(
            _one(
                "M",
                lanes["M"],
                series="goals",
                note=f"{goals} goals",
                shape="chain",
                goals=goals,
                in_flight=plan.in_flight,
            )
        )
    return runs, _profile_hottest(plan, lanes["M"], runs, out)


def lane_in_flight(plan: Plan, lane: str) -> int:
    """How many goals ``lane`` has in flight at saturation (a cap on what is outstanding in
    offered-rate runs)."""
    return plan.peer_in_flight if lane in PEERS else plan.in_flight


def _profile_hottest(plan: Plan, lane: Lane, runs: list[LaneRun], out: Path) -> Profile | None:
    """The mesh's chains at saturation once more, with py-spy sampling the process that spent
    the most CPU in the measured run (not itself measured: sampling slows it a little)."""
    measured = find_run(runs, "M", "chain", single=False)
    own = [
        p
        for p in (measured.processes if measured else [])
        if p.role == "lane" and p.name != BENCH_CLIENT
    ]
    if not own:
        return None
    hottest = max(own, key=lambda p: p.cpu_s).name
    raw = out / f"profile-{hottest}.txt"
    kw = {"shape": "chain", "goals": plan.saturation_goals["chain"], "in_flight": plan.in_flight}
    _one("M", lane, series="profile", note=f"py-spy on {hottest}", profile=(hottest, raw), **kw)
    return summarise(hottest, raw.read_text()) if raw.is_file() else None


def _saturated(runs: list[LaneRun], lane: str, shape: str) -> float:
    found = find_run(runs, lane, shape, single=False)
    return found.tasks_per_s if found is not None else 0.0


def _offered_rates(plan: Plan, lanes: dict[str, Lane], *, ceiling: float) -> list[LaneRun]:
    """Chains offered at shares of R0's saturation rate: each run offers goals for about
    RATE_RUN_S seconds (at most RATE_GOALS_MAX) and waits for all of them."""
    runs: list[LaneRun] = []
    if ceiling <= 0:  # R0 failed: no rates to offer
        return runs
    for share in plan.rates:
        rate = share * ceiling
        goals = int(rate / SHAPES["chain"] * RATE_RUN_S)
        goals = max(10, min(goals, plan.saturation_goals["chain"], RATE_GOALS_MAX))
        for name in plan.rate_lanes:
            if name in lanes:
                run = _one(
                    name,
                    lanes[name],
                    series="offered",
                    note=f"{share:.0%} of R0's saturation",
                    shape="chain",
                    goals=goals,
                    in_flight=lane_in_flight(plan, name),
                    rate=rate,
                )
                runs.append(run)
    return runs


def _warm_up(plan: Plan, lane: Lane) -> None:
    """Unmeasured raw runs until two in a row agree, at most ``WARM_UP_RUNS``: a broker started
    a moment ago spends its first minute or so compiling (a cold JIT), and one run was not
    always enough (after a restart, R0 moved 1,957 and then 2,932 chain tasks/s), which let the
    lanes measured first look better against R0 than they are."""
    kw: dict[str, Any] = {
        "shape": "chain",
        "goals": plan.saturation_goals["chain"],
        "in_flight": plan.in_flight,
    }
    last = 0.0
    for _ in range(WARM_UP_RUNS):
        rate = _one("R0", lane, series="warm-up", **kw).tasks_per_s
        if last and abs(rate - last) <= WARM_UP_AGREE * max(rate, last):
            return
        last = rate


def _half_loads(plan: Plan, lanes: dict[str, Lane], runs: list[LaneRun]) -> list[LaneRun]:
    """Each lane's chains offered at half its own saturation rate: the per-task overhead of a
    system under moderate load (at shares of R0's rate every lane but R0 and R1 is past its
    ceiling and shows a queue)."""
    out = []
    for name in plan.half_load_lanes:
        ceiling = _saturated(runs, name, "chain")
        if name not in lanes or ceiling <= 0:
            continue
        rate = HALF * ceiling
        goals = max(10, min(int(rate / SHAPES["chain"] * RATE_RUN_S), RATE_GOALS_MAX))
        note = "50% of its own saturation"
        flight = lane_in_flight(plan, name)
        kw = {"shape": "chain", "goals": goals, "in_flight": flight, "rate": rate}
        out.append(_one(name, lanes[name], series="half", note=note, **kw))
    return out


def _one(name: str, lane: Lane, *, series: str = "main", note: str = "", **kw: Any) -> LaneRun:
    began = time.monotonic()
    print(f"bench: {name} {kw} ...", file=sys.stderr, flush=True)
    probe = speed_probe()
    try:
        result = lane(**kw)
    except Exception as exc:  # noqa: BLE001 - a lane that breaks is reported; the others run
        print(f"bench: {name} failed: {exc!r}", file=sys.stderr, flush=True)
        load = load_label(kw.get("in_flight", 1), kw.get("rate"))
        result = LaneRun(name, kw["shape"], kw["goals"], 0, load, 0.0, notes=f"failed: {exc!r}")
    result.series = series
    result.probe_ms = probe
    if note:
        result.notes = f"{note}. {result.notes}".strip()
    if "workers" in kw:  # the scaling series
        result.load = f"{result.load} w{kw['workers']}"
    print(
        f"bench: {name} done in {time.monotonic() - began:.1f}s: {result.tasks_per_s:.0f} tasks/s",
        file=sys.stderr,
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = MeshSettings()
    check_all(settings)
    foreign = foreign_partitions(settings)
    inbox = inbox_rows(settings)
    runs, profile = run(QUICK if args.quick else FULL, args.out, settings)
    summary = ratios(runs)
    goals = targets(runs)
    print(table(runs))
    print(stage_table(runs))
    print(process_table(runs))
    print(json.dumps(summary, indent=2))
    print(render(goals))
    if profile is not None:
        print(profile.render())
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": _cpus(),
        "quick": args.quick,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "foreign_partitions": foreign,
        "inbox_rows": inbox,
        "speed_probe_ms": probe_range(runs),
    }
    document = {
        "machine": machine,
        "ratios": summary,
        "targets": [t.as_json() for t in goals],
        "profile": profile.as_json() if profile is not None else None,
        "runs": [r.as_json() for r in runs],
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2))
    render_png(runs, args.out / "results.png")
    print(f"bench: wrote {args.out / 'results.json'} and {args.out / 'results.png'}")
    return 0


def foreign_partitions(settings: MeshSettings) -> int:
    """How many partitions the broker carries besides the catalogue's topics and its own, with
    a warning when there are many: the broker's cost per request grows with every partition it
    holds, and 3,400 partitions left by earlier test runs made it spend up to twice the CPU per
    task, so such a run is not comparable with a clean one."""
    admin = AdminClient(client_config(settings, client_id="bench-check"))
    ours = {spec.name(settings.topic_prefix) for spec in CATALOGUE}
    topics = admin.list_topics(timeout=settings.connect_timeout_s).topics
    foreign = {n: len(t.partitions) for n, t in topics.items() if n not in ours and n[0] != "_"}
    count = sum(foreign.values())
    if count > FOREIGN_PARTITIONS_WARN:
        print(
            f"bench: the broker carries {count} partitions in {len(foreign)} topics besides the "
            f"mesh's (e.g. {min(foreign)}), which makes every request cost it more: delete "
            "them, or start from a fresh stack (`make down`, remove .mesh/kafka), for figures "
            "comparable with a clean run",
            file=sys.stderr,
        )
    return count


def probe_range(runs: list[LaneRun]) -> dict[str, float]:
    """The speed probe's least, median and largest figure over the run's lanes, printed too: a
    wide range means the machine's speed moved during the run."""
    probes = sorted(r.probe_ms for r in runs if r.probe_ms > 0)
    if not probes:
        return {}
    found = {"min": probes[0], "median": percentile(probes, 50), "max": probes[-1]}
    print(
        f"bench: speed probe {found['min']:.1f}-{found['max']:.1f} ms "
        f"(median {found['median']:.1f}; larger is slower)",
        file=sys.stderr,
    )
    return found


def inbox_rows(settings: MeshSettings) -> int:
    """About how many rows the ledger's inbox holds before the run (the planner statistics'
    estimate), with a warning when there are many: each lane deletes its own, but a ledger
    that served other meshes or older runs makes every planner batch's inbox insert dearer
    (almost half of Postgres's time per task on an inbox of five million rows)."""
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        row = conn.execute("select reltuples::bigint from pg_class where relname = 'inbox'")
        count = max(0, int((row.fetchone() or (0,))[0]))
    if count > INBOX_ROWS_WARN:
        print(
            f"bench: the ledger's inbox holds about {count:,} rows from other runs or meshes, "
            "which makes the planner's inserts cost more: for figures comparable with a clean "
            "run, start from a fresh ledger (`make down`, remove .mesh/postgres)",
            file=sys.stderr,
        )
    return count


def _cpus() -> int:
    import os  # noqa: PLC0415

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
