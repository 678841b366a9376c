"""The mesh on a three-broker KRaft cluster (replication factor 3, two replicas in sync), as
`make up BROKERS=3` starts it: one broker SIGKILLed while goals run, every goal completes and
every side effect happens once; the broker then comes back."""

from __future__ import annotations

import dataclasses
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.client import MeshClient
from agents.demo import onboarding_input
from agents.runtime.settings import MeshSettings
from infra import stack
from tests.integration.test_mesh import ONCE, effects
from tests.integration.test_outages import chain
from tests.mesh_support import ledger_rows, own_topics, running_mesh, wait_for_group_coordinator
from tests.support import assert_eventually

pytestmark = pytest.mark.integration
BROKERS = 3
PORT_OFFSET = 100  # the cluster's ports, above the main stack's
ONBOARDINGS = 5
CHAINS = 10


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.StackConfig]:
    """Three Kafka nodes of a cluster of their own, in a folder of their own."""
    main = stack.StackConfig.from_env()
    cfg = dataclasses.replace(
        main,
        data_dir=tmp_path_factory.mktemp("cluster"),
        kafka_port=main.kafka_port + PORT_OFFSET,
        kafka_controller_port=main.kafka_controller_port + PORT_OFFSET,
        kafka_brokers=BROKERS,
        kafka_heap="384m",
    )
    nodes = {node.name for node in stack.kafka_nodes(cfg)}
    assert stack.up(cfg, only=nodes) == sorted(nodes)
    try:
        yield cfg
    finally:
        stack.down(cfg, only=nodes)


def test_a_broker_killed_mid_run_loses_no_goal_and_repeats_no_effect(
    cluster: stack.StackConfig, stack_settings: MeshSettings, tmp_path: Path
) -> None:
    bootstrap = stack.client_env(cluster)["KAFKA_BOOTSTRAP_SERVERS"]
    on_cluster = stack_settings.model_copy(
        update={"kafka_bootstrap_servers": bootstrap, "replication_factor": BROKERS}
    )
    wait_for_group_coordinator(on_cluster)
    names = [f"Cluster {uuid.uuid4().hex[:8]}" for _ in range(ONBOARDINGS)]
    with (
        own_topics(on_cluster) as settings,
        running_mesh(settings, tmp_path, workers=2) as fleet,
        MeshClient(settings) as client,
    ):
        handles = [client.submit(f"onboard {n}", input=onboarding_input(n, {})) for n in names]
        handles += [client.submit(f"chain {n}", input=chain()) for n in range(CHAINS)]

        def some_step_done() -> bool:
            ids = [h.goal_id for h in handles]
            done = ledger_rows(
                settings,
                "select count(*) from tasks where goal_id = any(%s) and status = 'succeeded'",
                (ids,),
            )
            return bool(done[0][0])

        assert_eventually(some_step_done, timeout=60, what="a step done before the kill")
        victim = stack.kafka_nodes(cluster)[1]
        os.kill(stack.running_pids(cluster)[victim.name], signal.SIGKILL)
        finals = [h.wait(180) for h in handles]
        assert [m.name for m in fleet.members if not m.alive()] == []
    assert [f.status for f in finals] == ["completed"] * len(handles), [
        (f.goal_id, f.status, f.summary) for f in finals if f.status != "completed"
    ]
    for name in names:
        assert effects(settings, name, tmp_path / "sandbox") == ONCE, name
    assert stack.up(cluster, only={victim.name}) == [victim.name]  # and it comes back
