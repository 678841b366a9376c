"""The tools this mesh ships: the onboarding example and the general-purpose ones."""

from __future__ import annotations

from agents.tools.base import Registry
from agents.tools.builtin import BUILTIN_TOOLS
from agents.tools.onboarding import ONBOARDING_TOOLS


def default_registry() -> Registry:
    return Registry((*ONBOARDING_TOOLS, *BUILTIN_TOOLS))
