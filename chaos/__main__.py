"""``python -m chaos``: run the chaos suite and print one summary line; exit 0 when every
invariant held, 1 on any violation, 2 when a service does not answer."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from agents.runtime.errors import ConfigError
from chaos._run import ChaosConfig, run_chaos


def _parser() -> argparse.ArgumentParser:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description="Run goals of every scenario while agents are killed and paused; check that "
        "each completed or was rolled back, and that nothing happened twice.",
    )
    parser.add_argument("--goals", type=int, default=defaults.goals, help="how many goals")
    parser.add_argument(
        "--kill-every",
        type=float,
        default=defaults.kill_every,
        help="seconds between faults on average (0: no faults)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seeds the scenario mix and faults")
    parser.add_argument(
        "--pause-ratio",
        type=float,
        default=defaults.pause_ratio,
        help="share of faults that SIGSTOP an agent for the lease TTL + 2 s instead of killing it",
    )
    parser.add_argument(
        "--lease-ttl", type=float, default=defaults.lease_ttl, help="the agents' MESH_LEASE_TTL_S"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds for every goal to end (default: 300 + 6 per goal)",
    )
    parser.add_argument(
        "--in-flight", type=int, default=defaults.in_flight, help="goals running at once"
    )
    parser.add_argument("--out", type=Path, default=None, help="where runs keep their files")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    return parser


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C does, so the run stops its agents and drops its topics.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="chaos: %(message)s", stream=sys.stderr)
    logging.getLogger("librdkafka").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    config = ChaosConfig(
        goals=args.goals,
        kill_every=args.kill_every,
        seed=args.seed,
        pause_ratio=args.pause_ratio,
        lease_ttl=args.lease_ttl,
        timeout=args.timeout,
        in_flight=args.in_flight,
        out_dir=args.out,
    )
    try:
        report = run_chaos(config)
    except ConfigError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chaos: interrupted; the agents it started are stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report.summary()))
    print(report.line())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
