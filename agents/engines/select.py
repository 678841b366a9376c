"""Which engine a process uses: a model when ``OPENAI_API_KEY`` is set, the offline engine else."""

from __future__ import annotations

import os

from agents.engines.base import Engine


def engine_from_env() -> Engine:
    if os.environ.get("OPENAI_API_KEY"):
        from agents.engines.openai_engine import OpenAIEngine  # noqa: PLC0415 - optional path

        return OpenAIEngine.from_env()
    from agents.engines.offline import OfflineEngine  # noqa: PLC0415

    return OfflineEngine()
