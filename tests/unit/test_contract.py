"""The catalogue names each event's topic once, and settings read the documented variables."""

from __future__ import annotations

import pytest

from agents import events as ev
from agents.runtime.settings import MeshSettings
from topics.catalogue import CATALOGUE, TOPIC_OF, spec_for

pytestmark = pytest.mark.unit


def test_every_event_has_exactly_one_topic() -> None:
    owners = [e for spec in CATALOGUE for e in spec.events]
    assert sorted(owners, key=str) == sorted(ev.EVENT_TYPES, key=str)
    assert len(owners) == len(set(owners))


def test_keys_name_real_event_attributes() -> None:
    for event in ev.EVENT_TYPES:
        spec = TOPIC_OF[event]
        if spec.key:
            assert spec.key in event.model_fields or hasattr(event, spec.key), (event, spec.key)


def test_topic_names_are_prefixed_and_unique() -> None:
    names = [s.name("p.") for s in CATALOGUE]
    assert len(set(names)) == len(names)
    assert spec_for("results").name("p.") == "p.results"
    with pytest.raises(KeyError):
        spec_for("nope")


def test_min_insync_replicas_never_exceeds_the_replication_factor() -> None:
    for spec in CATALOGUE:
        assert spec.configs(1)["min.insync.replicas"] == "1"
        assert spec.configs(3)["min.insync.replicas"] == "2"


def test_settings_read_the_conventional_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@h/db")
    monkeypatch.setenv("REDIS_URL", "redis://r:2/0")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("MESH_TOPIC_PREFIX", "x.")
    settings = MeshSettings()
    assert settings.kafka_bootstrap_servers == "k:1"
    assert settings.database_url.get_secret_value() == "postgresql://u:secret@h/db"
    assert "secret" not in repr(settings) and "hunter2" not in repr(settings)
    assert settings.redis_url.get_secret_value() == "redis://r:2/0"
    assert settings.topic_prefix == "x."
