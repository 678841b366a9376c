"""One hop of the raw ceiling (R0): consume a topic, produce every record to the next, store
offsets after the batch is acknowledged. The same client settings as the mesh, no decoding.

    python -m bench.relay FROM_TOPIC TO_TOPIC GROUP
"""

from __future__ import annotations

import signal
import sys

from confluent_kafka import Consumer, Producer, TopicPartition

from agents.runtime.kafka import consumer_config, fetch, producer_config
from agents.runtime.settings import MeshSettings


def main(source: str, target: str, group: str) -> int:
    settings = MeshSettings()
    consumer = Consumer(consumer_config(settings, client_id="relay", group_id=group))
    producer = Producer(producer_config(settings, client_id="relay"))
    consumer.subscribe([source])
    running = {"on": True}
    signal.signal(signal.SIGTERM, lambda *_: running.update(on=False))
    while running["on"]:
        batch = [m for m in fetch(consumer, 500, 0.1) if not m.error()]
        for m in batch:
            producer.produce(target, m.value(), m.key(), headers=m.headers())
        producer.flush()
        last: dict[int, int] = {}
        for m in batch:
            last[m.partition() or 0] = m.offset() or 0
        if last:
            consumer.store_offsets(
                offsets=[TopicPartition(source, p, o + 1) for p, o in last.items()]
            )
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
