"""The transactional outbox: events stored with the state change they announce, relayed after.

``LedgerSink`` applies a batch of events in one transaction: it records each event id in the inbox
(so a redelivered event changes nothing), runs the handlers, and stores what they emit in the
outbox, all committed together. Right after the commit it sends those records and deletes them.
If the process dies in between, ``sweep`` (run periodically by every ledger agent) sends whatever
is left. Consumers de-duplicate, so a record sent twice is harmless; a record never sent is
impossible once its state change committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from agents import jsontext
from agents.events import Event
from agents.ledger.db import Connection, columns
from agents.runtime.consumer import (
    Delivery,
    Item,
    RuntimeHandle,
    SpanName,
    consumer_span,
    log_fields,
    record_span,
)
from agents.runtime.crash import crashpoint
from agents.runtime.errors import Category, PermanentError, TransientError
from agents.runtime.logs import bind
from agents.runtime.publisher import DeliveryError, Outgoing, Publisher

log = logging.getLogger(__name__)

LedgerHandler = Callable[[Any, Delivery, Connection], Iterable[Event]]
Refusal = Callable[[Any, str, str, Connection], Iterable[Event]]
"""Called in its own savepoint when a handler refused an event: (event, category, reason)."""
_RETRYABLE = (TransientError, psycopg.OperationalError)


class LedgerHooks(Protocol):
    """What an agent does once per batch transaction around its handlers: ``before_batch`` reads
    (and locks) in one go what the handlers will need; ``after_batch(True)`` writes what they held
    back, still in the transaction; ``after_batch(False)`` forgets all of it (the batch failed)."""

    def before_batch(self, conn: Connection, events: Sequence[Event]) -> None: ...

    def after_batch(self, completed: bool) -> None: ...


class LedgerSink:
    """Applies batches in ledger transactions with inbox de-duplication and an outbox."""

    def __init__(
        self,
        *,
        pool: ConnectionPool,
        consumer: str,
        handlers: Mapping[type[Event], LedgerHandler],
        on_refused: Refusal | None = None,
        hooks: LedgerHooks | None = None,
        span_name: SpanName | None = None,
    ) -> None:
        self._on_refused = on_refused
        self._span_name = span_name
        self._hooks = hooks
        # Outbox rows the broker has: deleted in the next batch's transaction (or by ``settle``),
        # which saves a commit per batch. Until then the sweeper leaves them alone (it takes
        # only rows older than the housekeeping period).
        self._delivered: list[int] = []
        self._pool = pool
        self._consumer = consumer
        self._handlers = dict(handlers)
        self.accepts = frozenset(self._handlers)

    def handle(self, items: Sequence[Item], runtime: RuntimeHandle) -> Sequence[Delivery]:
        attempt = 1
        while True:
            try:
                sent, refused = self._apply(items, runtime.publisher)
                break
            except _RETRYABLE as exc:
                delay = runtime.backoff.delay(attempt)
                log.warning(
                    "ledger batch failed (attempt %d), retry in %.2fs: %s", attempt, delay, exc
                )
                if runtime.wait_or_stop(delay):
                    return []
                attempt += 1
        crashpoint("ledger.after_commit")
        for item, category, reason in refused:
            runtime.dead_letter(item.delivery, category, reason)
        self._delivered += deliver(runtime.publisher, sent)
        return [item.delivery for item in items]

    def collect(self) -> Sequence[Delivery]:
        return ()  # ``handle`` finishes its whole batch

    def close(self) -> None:
        self.settle()

    def settle(self) -> None:
        """Delete the outbox rows delivered since the last batch (call when idle)."""
        if self._delivered:
            with self._pool.connection() as conn:
                forget(conn, self._delivered)
                conn.commit()
            self._delivered = []

    def _apply(
        self, items: Sequence[Item], publisher: Publisher
    ) -> tuple[list[tuple[int, Outgoing]], list[tuple[Item, str, str]]]:
        delivered = list(self._delivered)  # more may be added before the commit is known
        refused: list[tuple[Item, str, str]] = []
        try:
            stored = self._at_once(items, publisher, delivered)
        except _RETRYABLE:
            raise
        except Exception:  # find the culprit record by record, in savepoints
            log.debug("batch failed as a whole; applying it record by record", exc_info=True)
            stored, refused = self._one_at_a_time(items, publisher, delivered)
        self._delivered = self._delivered[len(delivered) :]  # committed: those rows are gone
        return stored, refused

    def _at_once(
        self, items: Sequence[Item], publisher: Publisher, delivered: Sequence[int]
    ) -> list[tuple[int, Outgoing]]:
        """The whole batch in one transaction, in pipeline mode and without savepoints (psycopg
        syncs the pipeline twice around each one): statements whose results nobody reads go out
        without waiting, so the common batch takes two round trips, the hooks' reads (which
        bring the begin's and the inbox's answers too) and the commit (which brings the outbox
        ids). Anything failing rolls the whole batch back."""
        with self._pool.connection() as conn, _explicit_transactions(conn):
            try:
                with conn.pipeline():
                    conn.execute("begin")
                    inbox = self._claim(conn, items, delivered)
                    if self._hooks is not None:
                        self._hooks.before_batch(conn, [item.event for item in items])
                    fresh = self._fresh(inbox, items)
                    records = [r for item in fresh for r in self._run(item, conn, publisher)]
                    self._end(completed=True)
                    staged = stage(conn, records)
                    conn.execute("commit")
            except BaseException:
                self._end(completed=False)
                _roll_back(conn)
                raise
            return staged()

    def _one_at_a_time(
        self, items: Sequence[Item], publisher: Publisher, delivered: Sequence[int]
    ) -> tuple[list[tuple[int, Outgoing]], list[tuple[Item, str, str]]]:
        """The batch again, each record in a savepoint of its own and without the hooks' batch
        reads, so the records that fail are refused and the others go through."""
        with self._pool.connection() as conn, conn.transaction():
            fresh = self._fresh(self._claim(conn, items, delivered), items)
            records, refused = self._one_by_one(fresh, conn, publisher)
            return store(conn, records), refused

    def _end(self, *, completed: bool) -> None:
        if self._hooks is not None:
            self._hooks.after_batch(completed)

    def _claim(
        self, conn: Connection, items: Sequence[Item], delivered: Sequence[int]
    ) -> psycopg.Cursor[Any]:
        """Record the batch's event ids in the inbox, and delete the outbox rows ``delivered``
        (one statement: each costs the batch 30-70 µs of psycopg's Python, however few rows it
        carries); the cursor returns the event ids seen first now."""
        return conn.execute(
            "with gone as (delete from outbox where id = any(%b::bigint[])) "
            "insert into inbox (consumer, event_id) select %s, unnest(%b::text[]) "
            "on conflict do nothing returning event_id",
            (list(delivered), self._consumer, [item.event.event_id for item in items]),
        )

    def _fresh(self, inbox: psycopg.Cursor[Any], items: Sequence[Item]) -> list[Item]:
        """The items the inbox had not seen, in order."""
        new = {row[0] for row in inbox.fetchall()}
        fresh = []
        for item in items:
            if item.event.event_id in new:
                new.discard(item.event.event_id)  # the same id twice in one batch: once only
                fresh.append(item)
        return fresh

    def _run(self, item: Item, conn: Connection, publisher: Publisher) -> list[Outgoing]:
        """Handle one event; its outputs are encoded inside its span, so they carry its trace."""
        handler = self._handlers[type(item.event)]
        with (
            bind(**log_fields(item.event)),
            record_span(item, self._span_name),
        ):
            return [publisher.prepare(e) for e in handler(item.event, item.delivery, conn)]

    def _one_by_one(
        self, items: Sequence[Item], conn: Connection, publisher: Publisher
    ) -> tuple[list[Outgoing], list[tuple[Item, str, str]]]:
        emitted: list[Outgoing] = []
        refused: list[tuple[Item, str, str]] = []
        for item in items:
            try:
                with conn.transaction():
                    emitted += self._run(item, conn, publisher)
            except _RETRYABLE:
                raise
            except PermanentError as exc:
                refused.append((item, exc.category, str(exc)))
            except Exception as exc:  # a handler bug: keep the record, go on with the others
                log.exception("ledger handler failed on %s", item.event.schema_name)
                refused.append((item, Category.HANDLER_ERROR, f"{type(exc).__name__}: {exc}"))
            else:
                continue
            emitted += self._refusal(item, refused[-1][1], refused[-1][2], conn, publisher)
        return emitted, refused

    def _refusal(
        self, item: Item, category: str, reason: str, conn: Connection, publisher: Publisher
    ) -> list[Outgoing]:
        """Let the agent settle what the refused event was about (a goal must not hang)."""
        if self._on_refused is None:
            return []
        with conn.transaction(), consumer_span(item):
            return [
                publisher.prepare(e) for e in self._on_refused(item.event, category, reason, conn)
            ]


@contextmanager
def _explicit_transactions(conn: Connection) -> Iterator[None]:
    """The connection in autocommit mode, so a batch's own ``begin`` goes down the pipeline with
    its first statements: psycopg starts an implicit transaction with a BEGIN of its own and
    then syncs the pipeline to learn its outcome, a round trip before the batch's first read."""
    conn.autocommit = True
    try:
        yield
    finally:
        if conn.info.transaction_status == TransactionStatus.IDLE:
            conn.autocommit = False
        else:  # broken mid-batch: the pool discards it
            conn.close()


def _roll_back(conn: Connection) -> None:
    """Undo a failed batch; a connection too broken for that is discarded by the pool."""
    try:
        conn.rollback()
    except psycopg.Error as exc:
        log.warning("rollback of a failed batch failed: %s", exc)


def store(conn: Connection, records: Sequence[Outgoing]) -> list[tuple[int, Outgoing]]:
    """Insert records into the outbox in this transaction; returns them with their ids."""
    return stage(conn, records)()


def stage(
    conn: Connection, records: Sequence[Outgoing]
) -> Callable[[], list[tuple[int, Outgoing]]]:
    """Insert records into the outbox in this transaction; the returned function gives them with
    their ids (in pipeline mode, call it after the commit: its round trip brings them)."""
    if not records:
        return list
    cursor = conn.execute(
        "insert into outbox (topic, key, value, headers) "
        "select * from unnest(%b::text[], %b::bytea[], %b::bytea[], %b::jsonb[]) "
        "returning id",
        (*columns(records, "topic", "key", "value"), [_headers_json(r) for r in records]),
    )
    return lambda: [(int(row[0]), rec) for row, rec in zip(cursor.fetchall(), records, strict=True)]


def relay(pool: ConnectionPool, publisher: Publisher, sent: Sequence[tuple[int, Outgoing]]) -> None:
    """Send committed outbox records and delete them once the broker has them."""
    delivered = deliver(publisher, sent)
    if delivered:
        with pool.connection() as conn:
            forget(conn, delivered)
            conn.commit()


def deliver(publisher: Publisher, sent: Sequence[tuple[int, Outgoing]]) -> list[int]:
    """Send committed outbox records; the ids of those the broker acknowledged (all or none)."""
    if not sent:
        return []
    for _, record in sent:
        publisher.send(record)
    try:
        publisher.flush()
    except DeliveryError as exc:  # the rows stay; the sweeper sends them later
        log.warning("outbox relay incomplete, the sweeper will retry: %s", exc)
        return []
    return [i for i, _ in sent]


def forget(conn: Connection, ids: Sequence[int]) -> None:
    """Delete delivered outbox rows, in the caller's transaction."""
    if ids:
        conn.execute("delete from outbox where id = any(%b)", (list(ids),))


def sweep(pool: ConnectionPool, publisher: Publisher, *, older_than_s: float = 2.0) -> int:
    """Send outbox records of this publisher's mesh (its topic prefix: several meshes may share
    one ledger) that their writer did not relay (it died); returns how many."""
    with pool.connection() as conn, conn.transaction():
        rows = conn.execute(
            "select id, topic, key, value, headers from outbox "
            "where created_at < now() - make_interval(secs => %s) and starts_with(topic, %s) "
            "order by id limit 1000 for update skip locked",
            (older_than_s, publisher.topic_prefix),
        ).fetchall()
        if not rows:
            return 0
        for _, topic, key, value, headers in rows:
            publisher.send(Outgoing(topic, key, value, _headers_from(headers)))
        publisher.flush()
        conn.execute("delete from outbox where id = any(%b)", ([r[0] for r in rows],))
    log.info("outbox sweeper sent %d record(s)", len(rows))
    return len(rows)


def _headers_json(record: Outgoing) -> str:
    return jsontext.dumps(
        [[k, v.decode("latin-1") if isinstance(v, bytes) else v] for k, v in record.headers]
    )


def _headers_from(raw: Any) -> tuple[tuple[str, bytes | str | None], ...]:
    return tuple((str(k), v.encode("latin-1") if isinstance(v, str) else v) for k, v in raw)
