"""``mesh`` sub-commands for running agents and following goals: run, submit, status, tail,
cancel. Exit codes of ``submit --wait``: 0 completed, 1 failed or cancelled, 3 waiting for a
human, 4 still running when the timeout ran out."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agents import events as ev
from agents.client import EXIT_CODES, TERMINAL, GoalStatus, MeshClient, TaskStatus
from agents.runtime.settings import MeshSettings

EXIT_TIMEOUT = 4


def run_agent(args: argparse.Namespace, settings: MeshSettings) -> int:
    if args.app:
        settings = settings.model_copy(update={"app": args.app})
    if args.role == "planner":
        from agents.planner.main import run as run_planner  # noqa: PLC0415 - one role per process

        return run_planner(settings)
    if args.role == "worker":
        from agents.worker.main import run as run_worker  # noqa: PLC0415

        pools = [p for p in (args.pool or "").split(",") if p and p != "*"]
        return run_worker(settings, pools=pools, concurrency=args.concurrency)
    from agents.evaluator.main import run as run_evaluator  # noqa: PLC0415

    return run_evaluator(settings)


def _read_input(source: str | None) -> dict[str, Any]:
    if source is None:
        return {}
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"mesh submit: cannot read --input {source}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"mesh submit: --input {source} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SystemExit("mesh submit: --input must hold a JSON object")
    return data


def submit(args: argparse.Namespace, settings: MeshSettings) -> int:
    from agents.runtime.telemetry import setup_tracing  # noqa: PLC0415

    provider = setup_tracing("mesh-cli")  # the goal's trace starts here
    try:
        return _submit(args, settings)
    finally:
        provider.shutdown()


def _submit(args: argparse.Namespace, settings: MeshSettings) -> int:
    goal_input = _read_input(args.input)
    with MeshClient(settings) as client:
        try:
            handle = client.submit(
                args.text,
                input=goal_input,
                max_steps=args.max_steps,
                budget_usd=args.budget_usd,
                max_tokens=args.max_tokens,
                confidence_threshold=args.confidence_threshold,
                compensation_policy=args.compensation_policy,
                deadline_s=args.deadline,
                submitted_by="cli",
            )
        except ValidationError as exc:
            raise SystemExit(f"mesh submit: the goal is refused: {ev.refusal(exc)}") from None
        if not args.wait:
            print(json.dumps({"goal_id": handle.goal_id}) if args.json else handle.goal_id)
            return 0
        if not args.json:
            print(f"goal {handle.goal_id} submitted")
        progress = Progress(quiet=args.json)
        try:
            final = handle.wait(args.timeout, on_change=progress.show)
        except TimeoutError as exc:
            print(f"mesh submit: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
        _print_status(final, as_json=args.json, brief=True)
        return EXIT_CODES.get(final.status, 1)


class Progress:
    """Prints what changed in a goal since the last look: one line per task transition."""

    def __init__(self, *, quiet: bool = False) -> None:
        self._quiet = quiet
        self._seen: dict[str, tuple[str, int]] = {}
        self._goal = ""

    def show(self, status: GoalStatus) -> None:
        """The lines of what changed, in the order it happened: several steps may have moved
        between two looks (and the goal ended after them), so they are told by their times, and
        the goal's end comes last."""
        if self._quiet:
            return
        changed = [t for t in status.tasks if self._moved(t)]
        goal_moved, self._goal = status.status != self._goal, status.status
        ended = status.status in TERMINAL
        if goal_moved and not ended:
            print(f"  goal      {status.status}")
        for task in sorted(changed, key=_when):
            retry = f" (attempt {task.attempts})" if task.attempts > 1 else ""
            print(f"  {task.status:<11} {task.step_id} [{task.tool}]{retry}")
        if goal_moved and ended:
            print(f"  goal      {status.status}")
        sys.stdout.flush()

    def _moved(self, task: TaskStatus) -> bool:
        state = (task.status, task.attempts)
        if self._seen.get(task.step_id) == state or task.status == "pending":
            return False
        self._seen[task.step_id] = state
        return True


def _when(task: TaskStatus) -> datetime:
    """When a task last moved, as far as its status says (one not started yet: last)."""
    return task.finished_at or task.started_at or datetime.max.replace(tzinfo=UTC)


def status(args: argparse.Namespace, settings: MeshSettings) -> int:
    with MeshClient(settings) as client:
        current = client.status(args.goal_id)
    _print_status(current, as_json=args.json)
    return 0 if current.status != "submitted" or args.json else 1


def _print_status(status: GoalStatus, *, as_json: bool, brief: bool = False) -> None:
    if as_json:
        print(json.dumps(status.as_json(), default=str))
        return
    print(f"goal {status.goal_id}: {status.status}")
    if status.summary:
        print(f"  {status.summary}")
    print(f"  steps {status.steps_used}, tokens {status.tokens}, cost ${status.cost_usd:.4f}")
    if brief:
        return
    for t in status.tasks:
        took = (
            f"{(t.finished_at - t.started_at).total_seconds():.3f}s"
            if t.started_at and t.finished_at
            else "-"
        )
        print(
            f"  {t.step_id:<24} {t.tool:<28} {t.status:<11} attempts {t.attempts}  {took}  "
            f"tokens {t.tokens}  ${t.cost_usd:.4f}"
        )


def cancel(args: argparse.Namespace, settings: MeshSettings) -> int:
    with MeshClient(settings) as client:
        client.cancel(args.goal_id, reason=args.reason, requested_by="cli")
    print(f"cancel requested for goal {args.goal_id}")
    return 0


def add_commands(sub: Any) -> None:
    """Register run, submit, status, cancel, escalations, resolve, history and tail."""
    for add in (_add_run, _add_submit, _add_goal_commands, _add_escalations, _add_follow):
        add(sub)


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run an agent process")
    run.add_argument("role", choices=("planner", "worker", "evaluator"))
    run.add_argument("--pool", help="worker: comma-separated capability pools (default: all)")
    run.add_argument("--concurrency", type=int, help="worker: tasks run at once")
    run.add_argument(
        "--app", help="the MeshApp to load, package.module:attribute (default: MESH_APP)"
    )
    run.set_defaults(func=run_agent)


def _add_submit(sub: Any) -> None:
    sub_ = sub.add_parser("submit", help="submit a goal")
    sub_.add_argument("text")
    sub_.add_argument("--input", help="JSON object file for the tools, or - for stdin")
    sub_.add_argument("--max-steps", type=int, default=25)
    sub_.add_argument("--budget-usd", type=float)
    sub_.add_argument("--max-tokens", type=int)
    sub_.add_argument("--confidence-threshold", type=float, default=0.0)
    sub_.add_argument("--compensation-policy", choices=("all", "dependents", "none"), default="all")
    sub_.add_argument("--deadline", type=float, help="seconds from now")
    sub_.add_argument("--wait", action="store_true", help="follow the goal until it settles")
    sub_.add_argument("--timeout", type=float, default=120.0)
    sub_.add_argument("--json", action="store_true")
    sub_.set_defaults(func=submit)


def _add_goal_commands(sub: Any) -> None:
    st = sub.add_parser("status", help="a goal's state from the ledger")
    st.add_argument("goal_id")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=status)

    ca = sub.add_parser("cancel", help="cancel a goal")
    ca.add_argument("goal_id")
    ca.add_argument("--reason", default="")
    ca.set_defaults(func=cancel)


def _add_escalations(sub: Any) -> None:
    esc = sub.add_parser("escalations", help="open questions to humans")
    esc.add_argument("--goal")
    esc.add_argument("--all", action="store_true", help="answered ones too")
    esc.add_argument("--json", action="store_true")
    esc.set_defaults(func=escalations)

    res = sub.add_parser("resolve", help="answer an escalation")
    res.add_argument("escalation_id")
    how = res.add_mutually_exclusive_group(required=True)
    how.add_argument("--approve", dest="action", action="store_const", const="approve")
    how.add_argument("--retry", dest="action", action="store_const", const="retry")
    how.add_argument("--abort", dest="action", action="store_const", const="abort")
    how.add_argument(
        "--set",
        dest="values",
        nargs="+",
        metavar="KEY=VALUE",
        help="new arguments (JSON values or text), then retry",
    )
    res.add_argument("--by", default="cli")
    res.set_defaults(func=resolve)


def _add_follow(sub: Any) -> None:
    tree = sub.add_parser("trace", help="a goal's decision tree from the ledger")
    tree.add_argument("goal_id")
    tree.set_defaults(func=explain)

    hist = sub.add_parser("history", help="a goal's events, read back from Kafka alone")
    hist.add_argument("goal_id")
    hist.add_argument("--json", action="store_true")
    hist.set_defaults(func=history)

    tail = sub.add_parser("tail", help="follow the results topic")
    tail.add_argument("--goal")
    tail.add_argument("--json", action="store_true")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--max-seconds", type=float, help="stop after this long")
    tail.set_defaults(func=follow)


def follow(args: argparse.Namespace, settings: MeshSettings) -> int:
    from agents.tail import tail  # noqa: PLC0415

    return tail(
        settings,
        goal=args.goal,
        as_json=args.json,
        from_beginning=args.from_beginning,
        max_seconds=args.max_seconds,
    )


def history(args: argparse.Namespace, settings: MeshSettings) -> int:
    from agents.history import goal_history  # noqa: PLC0415
    from agents.tail import describe  # noqa: PLC0415

    events = goal_history(settings, args.goal_id)
    for event in events:
        if args.json:
            print(json.dumps({"type": event.schema_name, **event.model_dump(mode="json")}))
        else:
            print(describe(event))
    return 0 if events else 1


def escalations(args: argparse.Namespace, settings: MeshSettings) -> int:
    with MeshClient(settings) as client:
        found = client.escalations(goal_id=args.goal, open_only=not args.all)
    if args.json:
        print(json.dumps([e.as_json() for e in found], default=str))
        return 0
    if not found:
        print("no open escalations")
    for e in found:
        print(f"{e.escalation_id}  goal {e.goal_id}  step {e.step_id}  [{e.status}]")
        print(f"    {e.reason}")
        print(
            f"    answer with: mesh resolve {e.escalation_id} --approve | --retry | --abort | "
            f"--set key=value   (default on expiry {e.expires_at:%H:%M:%S}: {e.default_action})"
        )
    return 0


def _parse_values(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"mesh resolve: --set takes KEY=VALUE, not {pair!r}")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def resolve(args: argparse.Namespace, settings: MeshSettings) -> int:
    action = "set" if args.values else args.action
    values = _parse_values(args.values) if args.values else {}
    with MeshClient(settings) as client:
        try:
            client.resolve(args.escalation_id, action, values=values, resolved_by=args.by)
        except LookupError as exc:
            print(f"mesh resolve: {exc}", file=sys.stderr)
            return 1
    print(f"{action} sent for escalation {args.escalation_id}")
    return 0


def explain(args: argparse.Namespace, settings: MeshSettings) -> int:
    from agents.explain import decision_tree  # noqa: PLC0415

    lines = decision_tree(settings, args.goal_id)
    print("\n".join(lines) if lines else f"no goal {args.goal_id} in the ledger")
    return 0 if lines else 1
