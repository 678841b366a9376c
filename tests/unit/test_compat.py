"""The schema tree is FULL_TRANSITIVE compatible, and the check really catches breakage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from schemas import HISTORY_DIR, SCHEMA_DIR, registry
from schemas.compat import can_read, full_transitive_errors
from schemas.export import problems, tree_errors

pytestmark = pytest.mark.unit
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "schemas"


def record(*fields: dict[str, Any], name: str = "mesh.R") -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields)}


def test_the_tree_agrees_with_the_models_and_its_history() -> None:
    assert problems() == []


def test_every_current_schema_is_full_transitive_against_its_history() -> None:
    assert sorted(SCHEMA_DIR.glob("*.avsc")), "no schemas found"
    assert tree_errors() == []


def test_an_incompatible_schema_fails_the_tree_check(tmp_path: Path) -> None:
    """Change GoalSubmitted incompatibly in a copy of the tree (and freeze it as v2, as a careless
    release would): the same check that guards the real tree reports both breakages."""
    schemas, history = tmp_path / "schemas", tmp_path / "history"
    shutil.copytree(SCHEMA_DIR, schemas, ignore=shutil.ignore_patterns("*.py", "history", "__*"))
    shutil.copytree(HISTORY_DIR, history)
    assert tree_errors(schemas, history) == []  # the copy starts out sound
    bad = json.loads((FIXTURES / "GoalSubmitted.incompatible.avsc").read_text())
    bad["fields"][0]["type"] = registry.current("GoalSubmitted")["fields"][0]["type"]
    (schemas / "GoalSubmitted.avsc").write_text(registry.render(bad))
    (history / "GoalSubmitted.v2.avsc").write_text(registry.render(bad))
    errors = tree_errors(schemas, history)
    assert any("current cannot read v1: $.max_steps" in e for e in errors), errors
    assert any("$.tenant: reader field missing in writer and has no default" in e for e in errors)
    assert all(e.startswith("GoalSubmitted: ") for e in errors)


def test_the_older_fixture_is_compatible_both_ways() -> None:
    old = json.loads((FIXTURES / "GoalSubmitted.old.avsc").read_text())
    assert full_transitive_errors(registry.current("GoalSubmitted"), [old]) == []


def test_field_added_without_default_breaks_backward() -> None:
    old = record({"name": "a", "type": "string"})
    new = record({"name": "a", "type": "string"}, {"name": "b", "type": "long"})
    assert can_read(old, new) == []  # old readers ignore the new field
    assert can_read(new, old) == ["$.b: reader field missing in writer and has no default"]


def test_field_added_with_default_is_full() -> None:
    old = record({"name": "a", "type": "string"})
    new = record({"name": "a", "type": "string"}, {"name": "b", "type": "long", "default": 0})
    assert full_transitive_errors(new, [old]) == []


def test_removing_a_field_without_default_breaks_forward() -> None:
    old = record({"name": "a", "type": "string"}, {"name": "b", "type": "long"})
    new = record({"name": "a", "type": "string"})
    assert any("v1 cannot read current" in e for e in full_transitive_errors(new, [old]))


def test_promotions_go_one_way() -> None:
    assert (
        can_read(record({"name": "a", "type": "double"}), record({"name": "a", "type": "int"}))
        == []
    )
    assert (
        can_read(record({"name": "a", "type": "int"}), record({"name": "a", "type": "double"}))
        != []
    )


def test_unions_need_every_writer_branch_readable() -> None:
    nullable = record({"name": "a", "type": ["null", "string"], "default": None})
    plain = record({"name": "a", "type": "string"})
    assert can_read(nullable, plain) == []
    assert can_read(plain, nullable) == ["$.a: reader string cannot read writer null"]


def test_enum_symbols_need_a_default_to_grow() -> None:
    small = {"type": "enum", "name": "mesh.E", "symbols": ["A"]}
    large = {"type": "enum", "name": "mesh.E", "symbols": ["A", "B"]}
    assert can_read(large, small) == []
    assert can_read(small, large) != []
    assert can_read(small | {"default": "A"}, large) == []


def test_record_names_must_match_or_alias() -> None:
    a = record({"name": "x", "type": "long"}, name="mesh.A")
    b = record({"name": "x", "type": "long"}, name="mesh.B")
    assert can_read(a, b) != []
    assert can_read(a | {"aliases": ["B"]}, b) == []


def test_nested_named_types_resolve_by_reference() -> None:
    inner = record({"name": "v", "type": "long"}, name="mesh.Inner")
    writer = record({"name": "one", "type": inner}, {"name": "two", "type": "mesh.Inner"})
    changed = json.loads(json.dumps(writer))
    changed["fields"][0]["type"]["fields"][0]["type"] = "string"
    assert can_read(writer, writer) == []
    assert any(e.startswith("$.one.v") for e in can_read(changed, writer))
    assert any(e.startswith("$.two.v") for e in can_read(changed, writer))
