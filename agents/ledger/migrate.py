"""Versioned SQL migrations, applied automatically when an agent starts.

Files are ``infra/migrations/NNNN_name.sql``, applied in order, each in its own transaction,
and recorded in ``schema_migrations``. A session-level advisory lock makes concurrent starts safe:
the first process migrates, the others wait and then find nothing to do. Applied files must never
change; a changed checksum stops the process with a clear error.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from agents.runtime.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "infra" / "migrations"
_NAME = re.compile(r"^(?P<version>\d{4})_[a-z0-9_]+\.sql$")
_LOCK_ID = 0x6D657368  # "mesh"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ConfigError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match["version"]), path.name, path.read_text(encoding="utf-8")))
    return found


def migrate(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration; returns the names applied."""
    applied: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "create table if not exists schema_migrations (version int primary key, "
                "name text not null, checksum text not null, "
                "applied_at timestamptz not null default now())"
            )
            done = {
                row[0]: row[1]
                for row in conn.execute("select version, checksum from schema_migrations")
            }
            for migration in migrations(directory):
                if _apply(conn, migration, done):
                    applied.append(migration.name)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied


def _apply(
    conn: psycopg.Connection[tuple[object, ...]], m: Migration, done: dict[object, object]
) -> bool:
    if m.version in done:
        if done[m.version] != m.checksum:
            raise ConfigError(
                f"migration {m.name} changed after it was applied; add a new migration instead"
            )
        return False
    with conn.transaction():
        conn.execute(m.sql.encode())
        conn.execute(
            "insert into schema_migrations (version, name, checksum) values (%s, %s, %s)",
            (m.version, m.name, m.checksum),
        )
    return True
