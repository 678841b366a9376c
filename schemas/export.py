"""Write the ``.avsc`` files from the event models, and check that the tree agrees with them."""

from __future__ import annotations

from pathlib import Path

from agents.events import EVENT_TYPES, Event
from schemas import HISTORY_DIR, SCHEMA_DIR, registry
from schemas.compat import full_transitive_errors
from schemas.derive import avro_schema


def export(directory: Path = SCHEMA_DIR, history_dir: Path = HISTORY_DIR) -> list[str]:
    """Rewrite every current schema from its model; freeze a new history version when it changed.

    Returns what was written. A changed schema that is not FULL_TRANSITIVE compatible with its
    history is refused (nothing is written for it) and raises ``ValueError``.
    """
    written: list[str] = []
    for model in EVENT_TYPES:
        written += _export_one(model, directory, history_dir)
    return written


def _export_one(model: type[Event], directory: Path, history_dir: Path) -> list[str]:
    short = model.__name__
    schema = avro_schema(model)
    past = registry.history(short, history_dir)
    if past and past[-1] == schema:
        return []
    errors = full_transitive_errors(schema, past)
    if errors:
        raise ValueError(f"{short} is not FULL_TRANSITIVE compatible: " + "; ".join(errors))
    registry.current_path(short, directory).write_text(registry.render(schema), encoding="utf-8")
    frozen = registry.history_path(short, len(past) + 1, history_dir)
    frozen.write_text(registry.render(schema), encoding="utf-8")
    return [str(frozen)]


def problems(directory: Path = SCHEMA_DIR, history_dir: Path = HISTORY_DIR) -> list[str]:
    """Disagreements between models, current files and history; empty when all is well."""
    found: list[str] = []
    for model in EVENT_TYPES:
        short = model.__name__
        path = registry.current_path(short, directory)
        if not path.exists() or registry.load(path) != avro_schema(model):
            found.append(f"{path.name} differs from the model {short}: run `mesh schemas export`")
    return found + tree_errors(directory, history_dir)


def tree_errors(directory: Path = SCHEMA_DIR, history_dir: Path = HISTORY_DIR) -> list[str]:
    """Each current ``.avsc`` file must be its newest history version and FULL_TRANSITIVE
    compatible with every earlier one."""
    found: list[str] = []
    for path in sorted(directory.glob("*.avsc")):
        short, schema = path.stem, registry.load(path)
        past = registry.history(short, history_dir)
        if not past or past[-1] != schema:
            found.append(f"{short}: the newest history version is not the current schema")
        found += [f"{short}: {e}" for e in full_transitive_errors(schema, past)]
    return found
