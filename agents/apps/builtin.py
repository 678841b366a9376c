"""The app the mesh loads when none is named: the customer-onboarding example (its tools and its
playbook) and the general-purpose tools (``echo``, ``pause``, ``flaky``)."""

from __future__ import annotations

from agents.app import MeshApp
from agents.engines.offline import ONBOARDING
from agents.tools.builtin import BUILTIN_TOOLS
from agents.tools.onboarding import ONBOARDING_TOOLS

app = MeshApp("builtin")
app.add_tools(*ONBOARDING_TOOLS, *BUILTIN_TOOLS)
app.add_playbooks(ONBOARDING)
