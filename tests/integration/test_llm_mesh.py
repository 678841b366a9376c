"""The planner on the OpenAI-compatible engine, driven by a scripted Chat Completions server:
malformed model output ends as a categorised failure or a repair, never a crash or a stuck goal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agents.client import MeshClient
from agents.runtime.fleet import Fleet
from agents.runtime.settings import MeshSettings
from tests.fakes.chat_server import Call, Reply, Text, scripted_chat_server
from tests.mesh_support import agent_env, wait_groups

pytestmark = pytest.mark.integration


def plan(*steps: dict[str, Any]) -> str:
    return json.dumps({"steps": list(steps), "rationale": "scripted"})


ECHO = {"id": "a", "tool": "echo", "arguments": {"value": 1}, "depends_on": []}
CYCLE = plan(
    {"id": "a", "tool": "echo", "arguments": {}, "depends_on": ["b"]},
    {"id": "b", "tool": "echo", "arguments": {}, "depends_on": ["a"]},
)
BAD_ARGS = plan({"id": "a", "tool": "echo", "arguments": {"nope": 1}, "depends_on": []})

# (what the model answers to each try, the goal's expected status and error category)
CASES: list[tuple[list[Reply], str, str | None]] = [
    ([Text("I would start by..."), Text("Sure!")], "failed", "invalid_output"),
    ([Call("submit_plan", "{not json"), Call("submit_plan", "[1, 2")], "failed", "invalid_output"),
    ([Call("launch_rockets", "{}"), Call("launch_rockets", "{}")], "failed", "unknown_tool"),
    ([Call("submit_plan", CYCLE), Call("submit_plan", CYCLE)], "failed", "cyclic_plan"),
    ([Call("submit_plan", BAD_ARGS), Call("submit_plan", plan(ECHO))], "completed", None),
]


def test_malformed_model_output_is_categorised_or_repaired(
    mesh_settings: MeshSettings, tmp_path: Path
) -> None:
    script = [reply for replies, _, _ in CASES for reply in replies]
    with scripted_chat_server(script) as server:
        env = agent_env(mesh_settings, tmp_path)
        fleet = Fleet(env=env, log_dir=tmp_path / "logs")
        planner = fleet.add("planner", "planner")
        planner.env = env | {
            "OPENAI_API_KEY": "test-key",
            "OPENAI_BASE_URL": server.base_url,
            "MESH_LLM_MODEL": "gpt-4o-mini",
            "MESH_LLM_MAX_REPAIRS": "1",
        }
        fleet.add("worker", "worker")
        fleet.add("evaluator", "evaluator")
        with fleet, MeshClient(mesh_settings) as client:
            wait_groups(mesh_settings, {"planner": 1, "worker-all": 1, "evaluator": 1})
            finals = []
            for n, _ in enumerate(CASES):  # one at a time: the script is answered in order
                finals.append(client.submit(f"scripted goal {n}").wait(60))
                assert planner.alive()
        requests = server.requests
    assert [(f.status, f.error_category) for f in finals] == [(s, c) for _, s, c in CASES]
    repaired = finals[-1]
    assert repaired.tokens == 2 * (100 + 20)  # both tries are charged, from the usage fields
    assert repaired.cost_usd == pytest.approx((200 * 0.15 + 40 * 0.60) / 1_000_000)
    repair_request = json.dumps(requests[-1])
    assert "nope" in repair_request  # the model was told what was wrong
