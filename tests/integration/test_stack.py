"""The local stack launcher starts real Kafka, Postgres and Redis idempotently and stops them.

It runs on its own data folder and free ports, so a stack other tests use is left alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra import stack

LAUNCHER = Path(stack.__file__).resolve()


def _free_ports(count: int) -> list[int]:
    # Hold all sockets open together so the kernel hands out distinct ports.
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _launcher(env: dict[str, str], command: str) -> str:
    result = subprocess.run(
        [sys.executable, str(LAUNCHER), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, (
        f"stack.py {command} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def _alive(pid: int) -> bool:
    """Exists and is not a zombie (a zombie has exited; only its parent has yet to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return state.split()[1] != "Z"


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    data_dir = Path(tempfile.mkdtemp(prefix="mesh-stack-test-"))
    # mkdtemp makes the folder private, but Postgres runs as its own user and must reach inside.
    data_dir.chmod(0o755)
    kafka, controller, postgres, redis = _free_ports(4)
    env = {
        **os.environ,
        "MESH_DATA_DIR": str(data_dir),
        "MESH_KAFKA_PORT": str(kafka),
        "MESH_KAFKA_CONTROLLER_PORT": str(controller),
        "MESH_PG_PORT": str(postgres),
        "MESH_REDIS_PORT": str(redis),
    }
    try:
        yield env
    finally:
        subprocess.run(
            [sys.executable, str(LAUNCHER), "down"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.integration
def test_up_is_idempotent_and_down_stops_what_it_started(stack_env: dict[str, str]) -> None:
    cfg = stack.StackConfig.from_env(stack_env)

    _launcher(stack_env, "up")
    first = stack.running_pids(cfg)
    assert set(first) == {"kafka", "postgres", "redis"}

    _launcher(stack_env, "up")
    assert stack.running_pids(cfg) == first, "the second `up` started something new"
    listed = {int(line) for line in _launcher(stack_env, "pids").split()}
    assert listed == set(first.values())

    assert stack.kafka_answers(cfg.kafka_port)
    assert stack.postgres_answers(cfg.pg_port)
    assert stack.redis_answers(cfg.redis_port)

    _launcher(stack_env, "down")
    assert _wait_for(lambda: not any(_alive(pid) for pid in first.values()), 30), (
        f"still alive after down: {[pid for pid in first.values() if _alive(pid)]}"
    )
    assert stack.running_pids(cfg) == {}
    assert not any(cfg.pid_file(name).exists() for name in first)


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs Postgres as another account")
def test_postgres_starts_for_a_stack_in_a_folder_its_account_cannot_reach(
    stack_env: dict[str, str],
) -> None:
    """A clone in root's home (mode 700): Postgres, which runs as its own account, keeps its data
    in a folder of the stack's own it can reach, and `clean` deletes that too."""
    private = Path(stack_env["MESH_DATA_DIR"]) / "home"
    private.mkdir(mode=0o700)
    env = stack_env | {"MESH_DATA_DIR": str(private / ".mesh")}
    cfg = stack.StackConfig.from_env(env)
    try:
        assert stack.up(cfg, only={"postgres"}) == ["postgres"]
        assert stack.postgres_answers(cfg.pg_port)
        data = stack.pg_data(cfg)
        assert data.is_relative_to(stack.PG_FALLBACK_ROOT)
        assert (data / "PG_VERSION").is_file()
    finally:
        _launcher(env, "clean")
    assert not (private / ".mesh").exists()
    assert not data.parent.exists()
    assert stack.running_pids(cfg) == {}
