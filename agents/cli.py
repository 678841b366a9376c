"""The ``mesh`` command: agents, goals, escalations, the demo, topics and schemas.

Run ``mesh --help``. Configuration comes from the environment (``agents.runtime.settings``);
wrong configuration ends the command at once with exit code 2 and a message naming the fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from agents.cli_agents import add_commands
from agents.runtime.errors import ConfigError
from agents.runtime.logs import configure
from agents.runtime.settings import MeshSettings

Command = Callable[[argparse.Namespace, MeshSettings], int]


def _topics_ensure(args: argparse.Namespace, settings: MeshSettings) -> int:
    from topics.admin import ensure  # noqa: PLC0415 - keep `mesh --help` fast

    states = ensure(settings)
    for state in states:
        print(f"{state.action:8} {state.name}")
        for line in state.drift:
            print(f"         drift: {line}")
    return 1 if any(s.action == "drift" for s in states) else 0


def _topics_list(args: argparse.Namespace, settings: MeshSettings) -> int:
    from topics.admin import listing  # noqa: PLC0415

    rows = listing(settings)
    if args.json:
        print(
            json.dumps(
                [
                    {"name": r.name, "partitions": r.partitions, "end_offsets": list(r.end_offsets)}
                    for r in rows
                ]
            )
        )
        return 0
    print(f"{'topic':32} {'partitions':>10} {'records':>12}")
    for row in rows:
        print(f"{row.name:32} {row.partitions:>10} {row.total:>12}")
    return 0


def _schemas_check(args: argparse.Namespace, settings: MeshSettings) -> int:
    from schemas.export import problems  # noqa: PLC0415

    found = problems()
    for line in found:
        print(line)
    print("schemas: ok" if not found else f"schemas: {len(found)} problem(s)")
    return 1 if found else 0


def _schemas_export(args: argparse.Namespace, settings: MeshSettings) -> int:
    from schemas.export import export  # noqa: PLC0415

    for path in export():
        print(f"wrote {path}")
    return 0


def _check(args: argparse.Namespace, settings: MeshSettings) -> int:
    from agents.runtime.services import check_all  # noqa: PLC0415

    check_all(settings)
    print("kafka, postgres and redis answer")
    return 0


def _ledger_prune(args: argparse.Namespace, settings: MeshSettings) -> int:
    from agents.ledger.db import open_pool  # noqa: PLC0415
    from agents.ledger.prune import prune  # noqa: PLC0415
    from agents.runtime.services import check_postgres  # noqa: PLC0415

    days: float = args.older_than
    if not days >= 0:
        raise ConfigError(f"--older-than takes a number of days, 0 or more, not {days:g}")
    check_postgres(settings)
    pool = open_pool(settings, max_size=1)
    try:
        pruned = prune(pool, mesh=settings.topic_prefix, older_than_days=days)
    finally:
        pool.close()
    print(
        f"pruned {pruned} goal(s) of mesh {settings.topic_prefix!r} "
        f"that ended over {days:g} day(s) ago"
    )
    return 0


def _demo(args: argparse.Namespace, settings: MeshSettings) -> int:
    from agents.demo import run_demo  # noqa: PLC0415

    return run_demo(settings, scenario=args.scenario, answer=args.answer, timeout=args.timeout)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="check that Kafka, Postgres and Redis answer").set_defaults(
        func=_check
    )
    demo = sub.add_parser("demo", help="run the onboarding demo end to end")
    demo.add_argument(
        "--scenario",
        default="happy",
        choices=("happy", "billing-flaky", "billing-down", "infra-partial", "budget-exceeded"),
    )
    demo.add_argument("--answer", default="retry", choices=("retry", "abort", "approve"))
    demo.add_argument("--timeout", type=float, default=120.0)
    demo.set_defaults(func=_demo)
    add_commands(sub)
    topics = sub.add_parser("topics", help="the topic catalogue").add_subparsers(required=True)
    topics.add_parser("ensure", help="create missing topics, report drift").set_defaults(
        func=_topics_ensure
    )
    listing = topics.add_parser("list", help="topics with partitions and end offsets")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_topics_list)
    ledger = sub.add_parser("ledger", help="the ledger's upkeep").add_subparsers(required=True)
    prune = ledger.add_parser(
        "prune", help="delete goals that ended over DAYS ago, with everything hanging off them"
    )
    prune.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    prune.set_defaults(func=_ledger_prune)
    schemas = sub.add_parser("schemas", help="the Avro contract").add_subparsers(required=True)
    schemas.add_parser("check", help="models, files and history agree").set_defaults(
        func=_schemas_check
    )
    schemas.add_parser("export", help="write .avsc files from the models").set_defaults(
        func=_schemas_export
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(args.log_level)
    try:
        settings = MeshSettings()
        func: Command = args.func
        return func(args, settings)
    except ConfigError as exc:
        print(f"mesh: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
