"""``mesh demo``: the customer-onboarding goal end to end on the local stack.

Creates the topics and the ledger, starts one planner, two workers and one evaluator as separate
processes, submits the onboarding goal, shows its progress live, prints what it left behind (the
organisation row, the tenant's files, the email, the channel message), and stops the agents it
started. Exits 0 only when the goal completed.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from agents.cli_agents import Progress, _print_status
from agents.client import GoalStatus, MeshClient
from agents.ledger.migrate import migrate
from agents.runtime.fleet import Fleet
from agents.runtime.logs import to_file
from agents.runtime.services import check_all
from agents.runtime.settings import MeshSettings
from topics.admin import ensure


@dataclass(frozen=True)
class Scenario:
    """A demo run: the failures to simulate, the goal's limits, and the outcome to expect."""

    simulate: dict[str, Any] = field(default_factory=dict)
    max_steps: int = 25
    expect: str = "completed"
    about: str = ""


SCENARIOS: dict[str, Scenario] = {
    "happy": Scenario(about="every step succeeds; billing and infrastructure run in parallel"),
    "billing-flaky": Scenario(
        simulate={"configure_billing": {"fail_times": 2}},
        about="billing fails twice, is retried with exponential backoff, then succeeds",
    ),
    "billing-down": Scenario(
        simulate={"configure_billing": {"down": True}},
        expect="answered",
        about="billing keeps failing; after its retries the goal escalates to a human, who "
        "answers with `mesh resolve` (the demo answers as --answer says: retry or abort)",
    ),
    "infra-partial": Scenario(
        simulate={"provision_infrastructure": {"partial_after": 2}},
        expect="failed",
        about="infrastructure provisions 2 of 3 components and fails; what was done is rolled "
        "back in reverse order (infrastructure, billing, organisation)",
    ),
    "budget-exceeded": Scenario(
        simulate={"configure_billing": {"fail_times": 3}},
        max_steps=7,
        expect="failed",
        about="the goal may dispatch 7 steps; billing's retries use them up, the next dispatch "
        "is refused before it happens, and the completed steps are rolled back",
    ),
}


def onboarding_input(company: str, simulate: dict[str, Any]) -> dict[str, Any]:
    slug = company.lower().replace(" ", "-")
    return {
        "company": company,
        "email": f"admin@{slug}.example",
        "plan": "pro",
        "seats": 12,
        "region": "eu-west",
        "simulate": simulate,
    }


def run_demo(
    settings: MeshSettings,
    *,
    scenario: str = "happy",
    answer: str = "retry",
    timeout: float = 120.0,
) -> int:
    """Run a scenario; exit 0 when it ended as the scenario expects (completed for the happy
    paths, a clean failure with rollback for the failure scenarios)."""
    if scenario not in SCENARIOS:
        raise SystemExit(f"mesh demo: unknown scenario {scenario!r}; one of {sorted(SCENARIOS)}")
    plan = SCENARIOS[scenario]
    check_all(settings)
    ensure(settings)
    migrate(settings.database_url.get_secret_value())
    company = f"Acme {uuid.uuid4().hex[:6]}"
    print(f"demo: onboarding {company!r} (scenario {scenario}: {plan.about})")
    log_dir = Path(os.environ.get("MESH_DATA_DIR", ".mesh")) / "demo"
    to_file(log_dir / "demo.log")  # the clients' own log lines, beside the agents'
    fleet = Fleet(log_dir=log_dir)
    fleet.add("planner", "planner")
    fleet.add("worker-1", "worker")
    fleet.add("worker-2", "worker")
    fleet.add("evaluator", "evaluator")
    with fleet, MeshClient(settings) as client:
        print(
            f"demo: started 1 planner, 2 workers, 1 evaluator (logs in {fleet.members[0].log_dir})"
        )
        handle = client.submit(
            f"onboard customer {company}",
            input=onboarding_input(company, plan.simulate),
            max_steps=plan.max_steps,
            submitted_by="demo",
        )
        print(f"demo: goal {handle.goal_id}")
        progress = Progress()
        final = handle.wait(timeout, on_change=progress.show)
        if final.status == "waiting_human":
            final = _answer(client, handle.goal_id, answer, timeout, progress)
        _print_status(final, as_json=False)
        _show_effects(settings, company)
    expected = plan.expect if plan.expect != "answered" else _answered(answer)
    return 0 if final.status == expected else 1


def _answered(answer: str) -> str:
    return "completed" if answer in ("retry", "approve") else "failed"


def _answer(
    client: MeshClient, goal_id: str, answer: str, timeout: float, progress: Progress
) -> GoalStatus:
    (question,) = client.escalations(goal_id=goal_id)
    print(f"demo: the goal waits for a human: {question.reason}")
    print(f"demo: a human would run: mesh resolve {question.escalation_id} --{answer}")
    client.resolve(question.escalation_id, answer, resolved_by="demo")
    print(f"demo: answered --{answer}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        e.escalation_id == question.escalation_id for e in client.escalations(goal_id=goal_id)
    ):
        time.sleep(0.1)  # the planner has not taken the answer in yet
    return client.handle(goal_id).wait(timeout, on_change=progress.show)


def _show_effects(settings: MeshSettings, company: str) -> None:
    """What the goal left behind in the world (rolled-back things say so)."""
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        org = conn.execute(
            "select org_id, slug, deleted_at from onboarding_organisations where name = %s",
            (company,),
        ).fetchone()
        if org is None:
            print("demo: no organisation was created")
            return
        print(f"demo: organisation row   {org[0]} ({org[1]}){_undone(org[2], 'deleted')}")
        tenant = Path(settings.sandbox_dir) / "tenants" / str(org[1])
        files = sorted(p.name for p in tenant.glob("*")) if tenant.exists() else []
        print(f"demo: infrastructure     {tenant}: {', '.join(files) or 'nothing (removed)'}")
        for label, sql in (
            (
                "billing account",
                "select account_id, cancelled_at from onboarding_billing_accounts "
                "where org_id = %s",
            ),
            ("email", "select to_address, retracted_at from onboarding_emails where body like %s"),
            (
                "team channel",
                "select text, retracted_at from onboarding_channel_messages where text like %s",
            ),
        ):
            key = org[0] if label == "billing account" else f"%{company}%"
            row = conn.execute(sql.encode(), (key,)).fetchone()
            shown = f"{row[0]}{_undone(row[1], 'undone')}" if row else "none"
            print(f"demo: {label:<18} {shown}")


def _undone(when: Any, verb: str) -> str:
    return f"  [{verb} at {when:%H:%M:%S}]" if when else ""
