"""Which engine a process uses: a model when ``OPENAI_API_KEY`` is set, the offline engine else."""

from __future__ import annotations

import os
from collections.abc import Sequence

from agents.engines.base import Engine
from agents.engines.offline import PLAYBOOKS, OfflineEngine, Playbook, with_steps


def engine_from_env(playbooks: Sequence[Playbook] = PLAYBOOKS) -> Engine:
    """The model's engine, or the offline engine with ``playbooks`` (an app's) and ``steps``."""
    if os.environ.get("OPENAI_API_KEY"):
        from agents.engines.openai_engine import OpenAIEngine  # noqa: PLC0415 - optional path

        return OpenAIEngine.from_env()
    return OfflineEngine(with_steps(playbooks))
