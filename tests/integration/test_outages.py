"""Each stack service stopped for a minute under a running mesh, then started again: every agent
waits it out (none exits), every goal ends as it would have, and no side effect happens twice."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agents.client import GoalHandle, MeshClient
from agents.demo import onboarding_input
from agents.runtime.fleet import Fleet
from agents.runtime.settings import MeshSettings
from infra import stack
from tests.integration.test_mesh import ONCE, effects
from tests.mesh_support import running_mesh, steps_input

pytestmark = pytest.mark.integration

OUTAGE_S = 60.0  # how long the service stays away: longer than any lease, backoff or timeout
ONBOARDINGS = 5
CHAINS = 15  # goals of three chained one-second steps, in flight when the service stops


def chain() -> dict[str, Any]:
    return steps_input(
        *[
            {
                "id": f"s{n}",
                "tool": "pause",
                "arguments": {"seconds": 1, "label": str(n)},
                "depends_on": [f"s{n - 1}"] if n else [],
            }
            for n in range(3)
        ]
    )


@contextmanager
def stopped(service: str) -> Iterator[None]:
    """``service`` of the local stack stopped for the block, then started and answering."""
    config = stack.StackConfig.from_env()
    if service not in stack.running_pids(config):
        pytest.fail(f"{service} is not run by the local launcher here; the test cannot stop it")
    assert stack.down(config, only={service}) == [service]
    try:
        yield
    finally:
        stack.up(config)


def all_alive(fleet: Fleet) -> list[str]:
    return [m.name for m in fleet.members if not m.alive()]


@pytest.mark.parametrize("service", ["redis", "postgres", "kafka"])
def test_agents_wait_out_a_service_outage(
    mesh_settings: MeshSettings, tmp_path: Path, service: str
) -> None:
    names = [f"Outage {uuid.uuid4().hex[:8]}" for _ in range(ONBOARDINGS)]
    with (
        running_mesh(mesh_settings, tmp_path, workers=1) as fleet,
        MeshClient(mesh_settings) as client,
    ):
        handles: list[GoalHandle] = [
            client.submit(f"onboard {n}", input=onboarding_input(n, {})) for n in names
        ]
        handles += [client.submit(f"chain {n}", input=chain()) for n in range(CHAINS)]
        with stopped(service):
            # The outage itself is what is tested: a minute of it, whatever the agents do.
            time.sleep(OUTAGE_S)
            assert all_alive(fleet) == [], f"agents exited while {service} was away"
        finals = [h.wait(180) for h in handles]
        assert all_alive(fleet) == [], f"agents exited after {service} came back"
    assert [f.status for f in finals] == ["completed"] * len(handles), [
        (f.goal_id, f.status, f.summary) for f in finals if f.status != "completed"
    ]
    for name in names:
        assert effects(mesh_settings, name, tmp_path / "sandbox") == ONCE, name
