"""Create the catalogue's topics, report drift, list them with their end offsets, and drop a
prefix's topics when a short-lived mesh (a test's, a benchmark run's) is done with them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from agents.runtime.kafka import check_kafka, client_config, watermarks
from agents.runtime.settings import MeshSettings
from topics.catalogue import CATALOGUE, TopicSpec


@dataclass(frozen=True)
class TopicState:
    """What ``ensure`` found or did for one topic."""

    name: str
    action: str  # created | ok | drift
    drift: tuple[str, ...] = ()


def ensure(settings: MeshSettings, specs: tuple[TopicSpec, ...] = CATALOGUE) -> list[TopicState]:
    """Create missing topics; compare existing ones with the catalogue and report differences."""
    admin = check_kafka(settings)
    existing = admin.list_topics(timeout=settings.connect_timeout_s).topics
    missing = [s for s in specs if s.name(settings.topic_prefix) not in existing]
    _create(admin, settings, missing)
    states = [TopicState(s.name(settings.topic_prefix), "created") for s in missing]
    for spec in specs:
        if spec in missing:
            continue
        drift = _drift(
            admin, settings, spec, len(existing[spec.name(settings.topic_prefix)].partitions)
        )
        states.append(
            TopicState(spec.name(settings.topic_prefix), "drift" if drift else "ok", drift)
        )
    return states


def drop(settings: MeshSettings, specs: tuple[TopicSpec, ...] = CATALOGUE) -> None:
    """Delete the topics of ``settings.topic_prefix``. Every partition a broker carries costs it
    work on every request, so meshes that come and go should not leave theirs behind."""
    admin = AdminClient(client_config(settings, client_id="mesh-topics"))
    names = [s.name(settings.topic_prefix) for s in specs]
    delete_topics(admin, names, timeout=settings.connect_timeout_s)


def delete_topics(admin: AdminClient, names: Sequence[str], *, timeout: float) -> None:
    """Delete topics and wait until the broker has (a process that exits right after asking
    may never have sent the request); topics already gone are fine."""
    for future in admin.delete_topics(list(names)).values():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise


def _create(admin: AdminClient, settings: MeshSettings, specs: list[TopicSpec]) -> None:
    if not specs:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                s.name(settings.topic_prefix),
                num_partitions=s.partitions,
                replication_factor=settings.replication_factor,
                config=s.configs(settings.replication_factor),
            )
            for s in specs
        ],
        operation_timeout=30,
    )
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent ensure won the race
                raise RuntimeError(f"could not create topic {name}: {exc.args[0].str()}") from exc
    _wait_for_leaders(admin, list(futures), timeout=30)


def _wait_for_leaders(admin: AdminClient, names: list[str], *, timeout: float) -> None:
    """Return once every partition of ``names`` has a leader: a topic is usable only then."""
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=5).topics
        if all(_led(topics.get(name)) for name in names):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {names} still have partitions without a leader")
        time.sleep(0.1)


def _led(topic: Any) -> bool:
    if topic is None or topic.error is not None or not topic.partitions:
        return False
    return all(p.leader >= 0 and p.error is None for p in topic.partitions.values())


def _drift(
    admin: AdminClient, settings: MeshSettings, spec: TopicSpec, partitions: int
) -> tuple[str, ...]:
    found: list[str] = []
    if partitions != spec.partitions:
        found.append(f"partitions {partitions}, catalogue says {spec.partitions}")
    resource = ConfigResource(ConfigResource.Type.TOPIC, spec.name(settings.topic_prefix))
    actual = admin.describe_configs([resource])[resource].result()
    for key, wanted in spec.configs(settings.replication_factor).items():
        have = actual[key].value if key in actual else None
        if have != wanted:
            found.append(f"{key}={have}, catalogue says {wanted}")
    return tuple(found)


@dataclass(frozen=True)
class TopicListing:
    name: str
    partitions: int
    end_offsets: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.end_offsets)


def listing(settings: MeshSettings, specs: tuple[TopicSpec, ...] = CATALOGUE) -> list[TopicListing]:
    """Each catalogue topic that exists, with its partition count and end offsets."""
    admin = check_kafka(settings)
    existing = admin.list_topics(timeout=settings.connect_timeout_s).topics
    consumer = Consumer(
        client_config(settings, client_id="mesh-topics") | {"group.id": "mesh-topics"}
    )
    try:
        return [
            _listing(consumer, spec.name(settings.topic_prefix), len(existing[name].partitions))
            for spec in specs
            if (name := spec.name(settings.topic_prefix)) in existing
        ]
    finally:
        consumer.close()


def _listing(consumer: Consumer, name: str, partitions: int) -> TopicListing:
    ends = tuple(watermarks(consumer, name, p)[1] for p in range(partitions))
    return TopicListing(name, partitions, ends)
