"""Where the ``.avsc`` files are and how they are read: the current schemas and their history.

Layout: ``schemas/<Name>.avsc`` is the schema every agent writes today;
``schemas/history/<Name>.v<N>.avsc`` holds every released version, the newest equal to the
current file. Readers resolve any of them against the current schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from schemas import HISTORY_DIR, SCHEMA_DIR

_VERSIONED = re.compile(r"^(?P<name>\w+)\.v(?P<version>\d+)\.avsc$")


def load(path: Path) -> dict[str, Any]:
    """One schema file, parsed as JSON."""
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def current_path(short_name: str, directory: Path = SCHEMA_DIR) -> Path:
    return directory / f"{short_name}.avsc"


def current(short_name: str, directory: Path = SCHEMA_DIR) -> dict[str, Any]:
    """The schema agents write today for the record ``short_name`` (e.g. ``GoalSubmitted``)."""
    return load(current_path(short_name, directory))


def history(short_name: str, directory: Path = HISTORY_DIR) -> list[dict[str, Any]]:
    """Every released version of ``short_name``, oldest first."""
    versions: list[tuple[int, Path]] = []
    for path in directory.glob(f"{short_name}.v*.avsc"):
        match = _VERSIONED.match(path.name)
        if match and match["name"] == short_name:
            versions.append((int(match["version"]), path))
    return [load(path) for _, path in sorted(versions)]


def history_path(short_name: str, version: int, directory: Path = HISTORY_DIR) -> Path:
    return directory / f"{short_name}.v{version}.avsc"


def render(schema: dict[str, Any]) -> str:
    """The canonical text form of a schema file (stable, diff-friendly)."""
    return json.dumps(schema, indent=2) + "\n"
