"""The ``mesh`` command as users run it: submit --wait exit codes, status, tail, and the demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.runtime.settings import MeshSettings
from tests.mesh_support import agent_env, running_mesh, steps_input

pytestmark = pytest.mark.integration


def mesh(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_submit_wait_status_and_tail(mesh_settings: MeshSettings, tmp_path: Path) -> None:
    env = agent_env(mesh_settings, tmp_path)
    good = json.dumps(steps_input({"id": "hello", "tool": "echo", "arguments": {"value": "hi"}}))
    with running_mesh(mesh_settings, tmp_path):
        done = mesh(env, "submit", "say hello", "--input", "-", "--wait", stdin=good)
        failed = mesh(env, "submit", "an unknown goal", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    assert "succeeded   hello [echo]" in done.stdout and "completed" in done.stdout
    goal_id = done.stdout.split()[1]
    assert failed.returncode == 1
    assert json.loads(failed.stdout.splitlines()[-1])["error_category"] == "no_playbook"

    status = json.loads(mesh(env, "status", goal_id, "--json").stdout)
    assert status["status"] == "completed"
    assert [(t["step_id"], t["status"], t["attempts"]) for t in status["tasks"]] == [
        ("hello", "succeeded", 1)
    ]
    tail = mesh(env, "tail", "--goal", goal_id, "--json", "--max-seconds", "3")
    kinds = [json.loads(line)["type"] for line in tail.stdout.splitlines()]
    assert kinds == ["mesh.TaskCompleted", "mesh.TaskEvaluated", "mesh.GoalCompleted"]
    history = mesh(env, "history", goal_id)
    assert history.returncode == 0 and "GoalSubmitted" in history.stdout
    tree = mesh(env, "trace", goal_id)
    assert tree.returncode == 0
    assert "plan v1 by offline" in tree.stdout
    assert "hello [echo]: succeeded" in tree.stdout
    assert "verdict accept (1.00)" in tree.stdout


def test_the_demo_completes_the_onboarding_goal(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    env = agent_env(mesh_settings, tmp_path) | {"MESH_DATA_DIR": str(tmp_path)}
    demo = mesh(env, "demo")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "completed" in demo.stdout
    for effect in ("organisation row", "infrastructure", "email", "team channel"):
        assert f"demo: {effect}" in demo.stdout


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["--max-steps", "2147483648"], None, "max_steps: Input should be less than or equal"),
        (["--input", "-"], '{"company": "a\\u0000b"}', "input: Value error, contains a NUL"),
        (["--input", "-"], "not json", "--input - is not JSON"),
        (["--input", "-"], "[1, 2]", "--input must hold a JSON object"),
    ],
    ids=["max-steps-past-int32", "nul-in-input", "input-not-json", "input-not-an-object"],
)
def test_submit_refuses_a_goal_the_mesh_cannot_hold_in_one_line(
    mesh_settings: MeshSettings, tmp_path: Path, args: list[str], stdin: str | None, says: str
) -> None:
    refused = mesh(agent_env(mesh_settings, tmp_path), "submit", "onboard x", *args, stdin=stdin)
    assert refused.returncode == 1
    assert says in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
