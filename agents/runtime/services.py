"""Start-up checks for Postgres and Redis: answer within a few seconds or name the fix."""

from __future__ import annotations

import psycopg
import redis

from agents.runtime.errors import ConfigError
from agents.runtime.kafka import check_kafka
from agents.runtime.settings import MeshSettings

_FIX = "or run `make up` to start the local stack"


def check_postgres(settings: MeshSettings) -> None:
    url = settings.database_url.get_secret_value()
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(settings.connect_timeout_s))) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        raise ConfigError(
            f"Postgres at {_redact(url)} did not answer ({str(exc).strip()}). "
            f"Set DATABASE_URL to a reachable database, {_FIX}."
        ) from exc


def check_redis(settings: MeshSettings) -> None:
    url = settings.redis_url.get_secret_value()
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.connect_timeout_s,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(
            f"Redis at {_redact(url)} did not answer ({exc}). Set REDIS_URL to a reachable "
            f"server, {_FIX}."
        ) from exc
    finally:
        client.close()


def check_all(settings: MeshSettings) -> None:
    """Every service the mesh needs, checked in turn; the first failure raises."""
    check_kafka(settings)
    check_postgres(settings)
    check_redis(settings)


def _redact(url: str) -> str:
    """The URL without its password, fit for an error message."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}@{host}"
