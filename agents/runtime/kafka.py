"""The one place that turns settings into librdkafka configuration, and the start-up check."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from agents.runtime.errors import ConfigError
from agents.runtime.settings import MeshSettings


def client_config(settings: MeshSettings, *, client_id: str) -> dict[str, Any]:
    """Connection and security options shared by producers, consumers and admin clients."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        "security.protocol": settings.kafka_security_protocol,
        # Surface an unreachable cluster quickly instead of retrying silently for minutes.
        "socket.connection.setup.timeout.ms": int(settings.connect_timeout_s * 1000),
        # librdkafka's own log lines go through Python logging, so they come out as JSON lines.
        "logger": logging.getLogger("librdkafka"),
    }
    optional = {
        "sasl.mechanism": settings.kafka_sasl_mechanism,
        "sasl.username": settings.kafka_sasl_username,
        "sasl.password": (
            settings.kafka_sasl_password.get_secret_value()
            if settings.kafka_sasl_password
            else None
        ),
        "ssl.ca.location": settings.kafka_ssl_ca_location,
        "ssl.certificate.location": settings.kafka_ssl_certificate_location,
        "ssl.key.location": settings.kafka_ssl_key_location,
    }
    config.update({k: v for k, v in optional.items() if v is not None})
    return config


def producer_config(settings: MeshSettings, *, client_id: str) -> dict[str, Any]:
    """An idempotent producer: retries never duplicate or reorder records within a partition."""
    return client_config(settings, client_id=client_id) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        # Only failures are reported back: ``flush`` counts what is still unacknowledged, and a
        # report for every record cost a call into Python per record.
        "delivery.report.only.error": True,
        "message.max.bytes": 10 * 1024 * 1024,
    }


def consumer_config(settings: MeshSettings, *, client_id: str, group_id: str) -> dict[str, Any]:
    """Offsets are stored by the runtime only after a record was fully handled, then committed."""
    config = client_config(settings, client_id=client_id) | {
        "group.id": group_id,
        "enable.auto.offset.store": False,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 200,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        # A consumer that dies hands its partitions on within seconds, not the default 45.
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        # The broker answers a fetch as soon as a record arrives (fetch.min.bytes is 1), so this
        # only bounds how often an idle consumer asks again; shorter waits cost broker CPU.
        "fetch.wait.max.ms": 100,
        "fetch.max.bytes": 16 * 1024 * 1024,
        "max.partition.fetch.bytes": 10 * 1024 * 1024,
    }
    if settings.instance:  # static membership: a restart under this name is no rebalance
        config["group.instance.id"] = settings.instance
    return config


def check_kafka(settings: MeshSettings) -> AdminClient:
    """An admin client on a cluster that answered; ``ConfigError`` naming the fix otherwise."""
    # Connection failures are reported once, by the error below, not by every retry's log line.
    admin = AdminClient(client_config(settings, client_id="mesh-check") | {"log_level": 0})
    try:
        admin.list_topics(timeout=settings.connect_timeout_s)
    except KafkaException as exc:
        raise ConfigError(
            f"Kafka at {settings.kafka_bootstrap_servers} did not answer within "
            f"{settings.connect_timeout_s:g}s ({exc.args[0]}). Set KAFKA_BOOTSTRAP_SERVERS to a "
            "reachable broker, or run `make up` to start the local stack."
        ) from exc
    return admin


_LEADER_SETTLING = {"NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE", "UNKNOWN_TOPIC_OR_PART"}
_COORDINATOR_STARTING = {
    "NOT_COORDINATOR",
    "COORDINATOR_LOAD_IN_PROGRESS",
    "COORDINATOR_NOT_AVAILABLE",
}


def coordinator_busy(exc: KafkaException) -> bool:
    """A fresh broker answers group requests with these until its offsets topic is ready (not
    every one of them comes flagged as retriable)."""
    error = exc.args[0]
    return bool(error.retriable()) or error.name() in _COORDINATOR_STARTING


def groups_settled(admin: AdminClient, members: Mapping[str, int], *, assigned: bool) -> bool:
    """Whether each consumer group is stable with exactly that many members (and, when
    ``assigned``, every member holds partitions); False while a fresh broker's coordinator is
    still loading. A member that joins later makes its group rebalance and its partitions stall
    meanwhile, so fleets wait for this before they are measured or tested."""
    futures = admin.describe_consumer_groups(list(members), request_timeout=5)
    try:
        groups = {name: future.result() for name, future in futures.items()}
    except KafkaException as exc:
        if coordinator_busy(exc):
            return False
        raise
    return all(
        group.state == ConsumerGroupState.STABLE
        and len(group.members) == members[name]
        and (not assigned or all(m.assignment.topic_partitions for m in group.members))
        for name, group in groups.items()
    )


def watermarks(
    consumer: Consumer, topic: str, partition: int, timeout: float = 10.0
) -> tuple[int, int]:
    """(low, high) offsets of a partition, waiting out a leader that is still being elected
    (a topic created a moment ago answers NOT_LEADER_FOR_PARTITION for a short while)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0]
            settling = error.retriable() or error.name() in _LEADER_SETTLING
            if not settling or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def fetch(consumer: Consumer, most: int, timeout: float) -> list[Message]:
    """Up to ``most`` records: wait up to ``timeout`` for the first, then take what has already
    arrived without waiting. (``Consumer.consume(n, timeout)`` waits for all ``n`` or the whole
    timeout, which adds the timeout to every hop when traffic is light.)"""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(most - 1, 0)] if most > 1 else [first]
