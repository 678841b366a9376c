"""A user's package, outside this repository, supplies the tools and the playbook: every role
loads it with ``--app`` (here ``MESH_APP``), and a goal using them completes on the real stack."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agents.client import MeshClient
from agents.runtime.settings import MeshSettings
from tests.mesh_support import agent_env, ledger_rows, running_mesh

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "apps"


def test_a_goal_completes_with_the_tools_and_playbook_of_a_users_app(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    path = os.pathsep.join(p for p in (str(FIXTURES), os.environ.get("PYTHONPATH", "")) if p)
    env = agent_env(mesh_settings, tmp_path, MESH_APP="acme_ops.mesh:app", PYTHONPATH=path)
    with (
        running_mesh(mesh_settings, tmp_path, workers=1, env=env),
        MeshClient(mesh_settings) as client,
    ):
        handle = client.submit(
            "count words in the release notes",
            input={"text": "the mesh ships a loader for apps", "title": "notes"},
        )
        final = handle.wait(60)
    assert final.status == "completed", final
    rows = ledger_rows(
        mesh_settings,
        "select t.step_id, a.result from tasks t join attempts a using (task_id) "
        "where t.goal_id = %s order by t.step_id",
        (handle.goal_id,),
    )
    assert rows == [("count", {"words": 7}), ("report", {"line": "notes: 7 words"})]
