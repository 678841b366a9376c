"""Create the catalogue's topics, report drift, and list them with their end offsets."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from agents.runtime.kafka import check_kafka, client_config
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
    ends = tuple(
        consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
        for p in range(partitions)
    )
    return TopicListing(name, partitions, ends)
