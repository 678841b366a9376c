"""``mesh demo``: the customer-onboarding goal end to end on the local stack.

Creates the topics and the ledger, starts one planner, two workers and one evaluator as separate
processes, submits the onboarding goal, shows its progress live, prints what it left behind (the
organisation row, the tenant's files, the email, the channel message), and stops the agents it
started. Exits 0 only when the goal completed.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import psycopg

from agents.cli_agents import Progress, _print_status
from agents.client import EXIT_CODES, MeshClient
from agents.ledger.migrate import migrate
from agents.runtime.fleet import Fleet
from agents.runtime.services import check_all
from agents.runtime.settings import MeshSettings
from topics.admin import ensure

SCENARIOS: dict[str, dict[str, Any]] = {
    "happy": {},
    "billing-flaky": {"configure_billing": {"fail_times": 2}},
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


def run_demo(settings: MeshSettings, *, scenario: str = "happy", timeout: float = 120.0) -> int:
    if scenario not in SCENARIOS:
        raise SystemExit(f"mesh demo: unknown scenario {scenario!r}; one of {sorted(SCENARIOS)}")
    check_all(settings)
    ensure(settings)
    migrate(settings.database_url.get_secret_value())
    company = f"Acme {uuid.uuid4().hex[:6]}"
    print(f"demo: onboarding {company!r} (scenario {scenario})")
    fleet = Fleet(log_dir=Path(os.environ.get("MESH_DATA_DIR", ".mesh")) / "demo")
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
            input=onboarding_input(company, SCENARIOS[scenario]),
            submitted_by="demo",
        )
        print(f"demo: goal {handle.goal_id}")
        final = handle.wait(timeout, on_change=Progress().show)
        _print_status(final, as_json=False)
        if final.status == "completed":
            _show_effects(settings, company)
    return EXIT_CODES.get(final.status, 1)


def _show_effects(settings: MeshSettings, company: str) -> None:
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        org = conn.execute(
            "select org_id, slug from onboarding_organisations where name = %s", (company,)
        ).fetchone()
        if org is None:
            return
        print(f"demo: organisation row   {org[0]} ({org[1]})")
        tenant = Path(settings.sandbox_dir) / "tenants" / str(org[1])
        files = sorted(p.name for p in tenant.glob("*")) if tenant.exists() else []
        print(f"demo: infrastructure     {tenant}: {', '.join(files)}")
        email = conn.execute(
            "select to_address, subject from onboarding_emails where body like %s",
            (f"%{company}%",),
        ).fetchone()
        print(f"demo: email              {email}")
        post = conn.execute(
            "select channel, text from onboarding_channel_messages where text like %s",
            (f"%{company}%",),
        ).fetchone()
        print(f"demo: team channel       {post}")
