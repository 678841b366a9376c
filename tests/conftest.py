"""Fixtures: the real stack (from the environment, or the project's local launcher), isolated
topics per test, and a guard that keeps every test away from real LLM vendors."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agents.runtime.errors import ConfigError
from agents.runtime.services import check_all
from agents.runtime.settings import MeshSettings
from tests.mesh_support import own_topics, wait_for_group_coordinator


@pytest.fixture(autouse=True)
def _no_llm_vendor(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches a real model by accident: no key, and a base URL nothing listens on."""
    if os.environ.get("MESH_LLM_TESTS") != "1":
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")


def _services_from_env() -> bool:
    return any(
        os.environ.get(name) for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")
    )


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[MeshSettings]:
    """Settings pointing at running services; starts the local stack when none is given.

    Services named in the environment are used as they are. Otherwise the local launcher starts
    whatever is not running and stops, at the end of the session, only what it started. A
    missing service fails the tests; it never skips them.
    """
    from infra import stack  # only integration runs need the launcher

    started: list[str] = []
    config = stack.StackConfig.from_env()
    if not _services_from_env():
        started = stack.up(config)
    settings = MeshSettings()
    try:
        check_all(settings)
    except ConfigError as exc:
        pytest.fail(f"the stack is not reachable: {exc}")
    wait_for_group_coordinator(settings)
    yield settings
    if started:
        stack.down(config, only=started)


@pytest.fixture
def mesh_settings(stack_settings: MeshSettings) -> Iterator[MeshSettings]:
    """Settings with a topic prefix of this test's own, its topics created (and dropped after)."""
    with own_topics(stack_settings) as settings:
        yield settings
