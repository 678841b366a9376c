"""Every topic of the mesh, declared once: name, partitioning, retention, events and key.

Names are ``<prefix><role>`` with the prefix from ``MESH_TOPIC_PREFIX`` (default ``mesh.``), so
several meshes (or test runs) can share one cluster. The key keeps all events of one goal (or one
task) on one partition, which is what makes them ordered.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents import events as ev

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the contract."""

    role: str
    partitions: int
    retention_ms: int
    events: tuple[type[ev.Event], ...]
    key: str  # attribute of the event used as key; "" keeps the key of the refused record
    cleanup_policy: str = "delete"
    min_insync_replicas: int = 2  # clipped to the replication factor on small clusters
    max_message_bytes: int = 1024 * 1024

    def name(self, prefix: str) -> str:
        return f"{prefix}{self.role}"

    def configs(self, replication_factor: int) -> dict[str, str]:
        """The topic-level configs the admin creates and checks for drift."""
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            "min.insync.replicas": str(min(self.min_insync_replicas, replication_factor)),
            "max.message.bytes": str(self.max_message_bytes),
        }


GOALS = TopicSpec("goals", 6, 30 * DAY_MS, (ev.GoalSubmitted, ev.GoalCancelled), key="goal_id")
TASKS = TopicSpec("tasks", 12, 7 * DAY_MS, (ev.TaskAssigned,), key="task_id")
RESULTS = TopicSpec(
    "results",
    12,
    30 * DAY_MS,
    (
        ev.TaskCompleted,
        ev.TaskFailed,
        ev.TaskEvaluated,
        ev.GoalCompleted,
        ev.GoalFailed,
    ),
    key="goal_id",
)
ESCALATIONS = TopicSpec(
    "escalations", 3, 90 * DAY_MS, (ev.EscalationRaised, ev.EscalationResolved), key="goal_id"
)
# Dead letters hold the refused record whole, so they accept records larger than any other topic.
DEAD_LETTERS = TopicSpec(
    "deadletters", 3, 90 * DAY_MS, (ev.DeadLetter,), key="", max_message_bytes=8 * 1024 * 1024
)

CATALOGUE: tuple[TopicSpec, ...] = (GOALS, TASKS, RESULTS, ESCALATIONS, DEAD_LETTERS)

TOPIC_OF: dict[type[ev.Event], TopicSpec] = {
    event: spec for spec in CATALOGUE for event in spec.events
}


def spec_for(role: str) -> TopicSpec:
    """The catalogue entry for ``role`` (``goals``, ``tasks``, ...)."""
    for spec in CATALOGUE:
        if spec.role == role:
            return spec
    raise KeyError(f"no topic role {role!r}; known: {[s.role for s in CATALOGUE]}")
