"""Short-lived state in Redis: task leases with heartbeats, per-tool rate limits, and replay keys.

Nothing here is needed for correctness. If Redis is flushed, running workers put their leases back
at the next heartbeat, rate-limit windows start afresh, replayed attempts are simply run again
(idempotently), and a task whose lease vanished together with its worker is still re-delivered by
Kafka to another worker.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from agents.events import Event
from agents.runtime.errors import PoisonRecord
from schemas.codec import Codec

log = logging.getLogger(__name__)
LEASES_KEY_TTLS = 6  # the leases set outlives its last heartbeat by this many lease lengths
RATE_LIMIT_RETRY_S = 1.0  # how often a rate-limited call asks again while Redis is away


@dataclass(frozen=True)
class Lease:
    """A running task attempt, as ``task_id|attempt|goal_id|step_id|tool``."""

    task_id: str
    attempt: int
    goal_id: str
    step_id: str
    tool: str

    def member(self) -> str:
        return f"{self.task_id}|{self.attempt}|{self.goal_id}|{self.step_id}|{self.tool}"

    @classmethod
    def parse(cls, member: str) -> Lease:
        task_id, attempt, goal_id, step_id, tool = member.split("|")
        return cls(task_id, int(attempt), goal_id, step_id, tool)


class Leases:
    """Leases in one sorted set scored by expiry time; a heartbeat thread keeps ours alive."""

    def __init__(self, client: redis.Redis, *, prefix: str, ttl_s: float = 10.0) -> None:
        self._redis = client
        self._key = f"{prefix}leases"
        self.ttl_s = ttl_s
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, *leases: Lease, pipe: Pipeline | None = None) -> None:
        """Hold ``leases`` (sent on ``pipe`` when given, for the caller to execute)."""
        if not leases:
            return
        members = [lease.member() for lease in leases]
        with self._lock:
            self._held.update(members)
        scores = dict.fromkeys(members, time.time() + self.ttl_s)
        if pipe is not None:
            pipe.zadd(self._key, scores)
            return
        try:
            self._redis.zadd(self._key, scores)
        except redis.RedisError as exc:  # held all the same: the heartbeat stores it when it can
            log.warning("lease not stored yet: %s", exc)

    def release(self, *leases: Lease, pipe: Pipeline | None = None) -> None:
        if not leases:
            return
        self.forget(*leases)
        members = [lease.member() for lease in leases]
        if pipe is not None:
            pipe.zrem(self._key, *members)
            return
        try:
            self._redis.zrem(self._key, *members)
        except redis.RedisError as exc:  # it lapses; the planner ignores a finished attempt's
            log.warning("lease not released: %s", exc)

    def forget(self, *leases: Lease) -> None:
        """Stop renewing ``leases`` (an acquire whose pipeline failed): they lapse."""
        members = [lease.member() for lease in leases]
        with self._lock:
            self._held.difference_update(members)

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with self._lock:
                held = list(self._held)
            if not held:
                continue
            pipe = self._redis.pipeline(transaction=False)
            pipe.zadd(self._key, dict.fromkeys(held, time.time() + self.ttl_s))
            # The set goes when it empties; a mesh whose workers all went leaves it for this long.
            pipe.expire(self._key, int(self.ttl_s * LEASES_KEY_TTLS) + 1)
            try:
                pipe.execute()
            except redis.RedisError as exc:  # Redis away: the leases may lapse, work goes on
                log.warning("lease heartbeat failed: %s", exc)

    def take_expired(self, now: float | None = None) -> list[Lease]:
        """Remove and return leases whose holder stopped heartbeating (the watchdog's view)."""
        deadline = time.time() if now is None else now
        members = self._redis.zrangebyscore(self._key, "-inf", deadline)
        taken = []
        for member in members:
            text = member.decode() if isinstance(member, bytes) else str(member)
            if self._redis.zrem(self._key, text):  # only one watchdog gets each lease
                taken.append(Lease.parse(text))
        return taken


class RateLimiter:
    """At most ``limit`` calls a second per tool across all workers (one-second windows)."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    def wait_turn(self, tool: str, limit: float) -> None:
        """Return when this call fits in the tool's budget for the current second. Without
        Redis there is no shared budget to count against: the call waits for it to return
        rather than risk going over."""
        while True:
            second = int(time.time())
            key = f"{self._prefix}rate:{tool}:{second}"
            pipe = self._redis.pipeline()
            pipe.incr(key)
            pipe.expire(key, 2)
            try:
                if int(pipe.execute()[0]) <= limit:
                    return
            except redis.RedisError as exc:
                log.warning("rate limit of %s waits for Redis: %s", tool, exc)
                time.sleep(RATE_LIMIT_RETRY_S)
                continue
            time.sleep(max(second + 1 - time.time(), 0.001))  # the next window


class ReplayCache:
    """De-duplication keys with a TTL: the event a task attempt already produced, by attempt.

    A worker (or evaluator) that is handed the same attempt again, because its previous owner
    died before storing the offset, sends the stored event again, with its original event id,
    instead of repeating the work; downstream inboxes then drop the repeat. Losing the cache only
    means the work is repeated, which idempotency keys make harmless.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str, codec: Codec, ttl_s: int = 3600
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._codec = codec
        self._ttl = ttl_s

    def key(self, kind: str, task_id: str, attempt: int) -> str:
        """Where an attempt's event is kept (to read many at once; ``decode`` the answers)."""
        return f"{self._prefix}{kind}:{task_id}:{attempt}"

    def recall(self, kind: str, task_id: str, attempt: int) -> Event | None:
        try:
            data = self._redis.get(self.key(kind, task_id, attempt))
        except redis.RedisError as exc:
            log.warning("replay cache unavailable: %s", exc)
            return None
        return self.decode(data)

    def decode(self, data: object) -> Event | None:
        if not isinstance(data, bytes):
            return None
        try:
            return self._codec.decode(data)
        except PoisonRecord:
            return None  # written by a version that is gone: do the work again

    def remember(
        self, kind: str, task_id: str, attempt: int, event: Event, pipe: Pipeline | None = None
    ) -> None:
        """Store the event an attempt produced (on ``pipe`` when given, for the caller to
        execute)."""
        key, value = self.key(kind, task_id, attempt), self._codec.encode(event)
        if pipe is not None:
            pipe.set(key, value, ex=self._ttl)
            return
        try:
            self._redis.set(key, value, ex=self._ttl)
        except redis.RedisError as exc:
            log.warning("replay cache unavailable: %s", exc)


class CancelFlags:
    """Goals that were cancelled, so workers stop their tasks early (best effort: the ledger is
    what stops dispatches, and the planner ignores late results)."""

    def __init__(self, client: redis.Redis, *, prefix: str, ttl_s: int = 24 * 3600) -> None:
        self._redis = client
        self._prefix = f"{prefix}cancelled:"
        self._ttl = ttl_s

    def raise_flag(self, goal_id: str) -> None:
        try:
            self._redis.set(self.key(goal_id), 1, ex=self._ttl)
        except redis.RedisError as exc:
            log.warning("could not flag %s as cancelled: %s", goal_id, exc)

    def is_raised(self, goal_id: str) -> bool:
        try:
            return bool(self._redis.exists(self.key(goal_id)))
        except redis.RedisError:
            return False  # no Redis, no early stop

    def key(self, goal_id: str) -> str:
        """The flag of ``goal_id`` (to read many at once: a value there means cancelled)."""
        return self._prefix + goal_id
