"""The tools this mesh ships: the onboarding example and the general-purpose ones (the built-in
app's, ``agents.apps.builtin``)."""

from __future__ import annotations

from agents.tools.base import Registry


def default_registry() -> Registry:
    from agents.apps.builtin import app  # noqa: PLC0415 - the app imports the tools' modules

    return app.registry()
