"""One settings object for every process, read from the environment.

Service addresses use the conventional names (``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``,
``REDIS_URL``) and default to the local stack that ``make up`` starts; everything else the mesh
reads is prefixed ``MESH_``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_KAFKA = "127.0.0.1:19092"
LOCAL_DATABASE = "postgresql://mesh@127.0.0.1:15432/mesh"
LOCAL_REDIS = "redis://127.0.0.1:16379/0"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class MeshSettings(BaseSettings):
    """Everything a mesh process needs to know about its surroundings."""

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(
        LOCAL_KAFKA, validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS")
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias=_env("KAFKA_SECURITY_PROTOCOL")
    )
    kafka_sasl_mechanism: str | None = Field(None, validation_alias=_env("KAFKA_SASL_MECHANISM"))
    kafka_sasl_username: str | None = Field(None, validation_alias=_env("KAFKA_SASL_USERNAME"))
    kafka_sasl_password: SecretStr | None = Field(
        None, validation_alias=_env("KAFKA_SASL_PASSWORD")
    )
    kafka_ssl_ca_location: str | None = Field(None, validation_alias=_env("KAFKA_SSL_CA_LOCATION"))
    kafka_ssl_certificate_location: str | None = Field(
        None, validation_alias=_env("KAFKA_SSL_CERTIFICATE_LOCATION")
    )
    kafka_ssl_key_location: str | None = Field(
        None, validation_alias=_env("KAFKA_SSL_KEY_LOCATION")
    )
    database_url: SecretStr = Field(
        SecretStr(LOCAL_DATABASE), validation_alias=_env("DATABASE_URL")
    )
    redis_url: SecretStr = Field(SecretStr(LOCAL_REDIS), validation_alias=_env("REDIS_URL"))

    topic_prefix: str = "mesh."
    replication_factor: int = Field(1, ge=1)
    max_event_bytes: int = Field(512 * 1024, ge=1024)
    connect_timeout_s: float = Field(5.0, gt=0)
    consume_batch: int = Field(500, ge=1)
    planner_linger_ms: float = Field(
        5.0, ge=0, description="how long the planner waits for an outcome's verdict (0: never)"
    )
    sandbox_dir: str = Field(".mesh/sandbox", description="where local tools put artefacts")
    app: str = Field(
        "agents.apps.builtin:app",
        description="the MeshApp every role loads (package.module:attribute): its tools and "
        "playbooks",
    )
    lease_ttl_s: float = Field(10.0, gt=0)
    replay_ttl_s: int = Field(
        3600,
        ge=60,
        description="how long a worker keeps an attempt's outcome to send again, not redo, if "
        "the attempt is delivered again (after a crash, within minutes)",
    )
    worker_concurrency: int = Field(8, ge=1)
    instance: str | None = Field(
        None,
        min_length=1,
        description="a name this process keeps across restarts (a pod's, a unit's): static "
        "group membership, so a restart within the session timeout resumes its partitions "
        "without a rebalance",
    )
    same_failure_limit: int = Field(10, ge=1, description="the same failure this often ends a goal")
    no_progress_limit: int = Field(
        20, ge=1, description="verdicts without an accept that end a goal"
    )
    infra_retries: int = Field(
        50, ge=0, description="attempts a step may lose to worker deaths and lease expiries"
    )
    max_plan_steps: int = Field(
        1000,
        ge=1,
        le=10_000,
        description="steps a plan may have; a larger one is refused before it costs the planner",
    )
    escalation_ttl_s: float = Field(3600.0, gt=0, description="how long a human has to answer")
    escalation_default: Literal["approve", "retry", "abort"] = "abort"
    worker_scopes: str | None = Field(
        None, description="comma-separated credential scopes workers hold; unset: all"
    )

    def scopes(self) -> frozenset[str] | None:
        """The scopes a worker may use, or None for no restriction."""
        if self.worker_scopes is None:
            return None
        return frozenset(s.strip() for s in self.worker_scopes.split(",") if s.strip())
