"""Every NATS subject and stream gpuplane uses. Nothing else builds a subject string.

Naming: ``gpuplane.<topic>.<qualifier...>``. Per-host subjects end in the host name so that
``<prefix>.>`` sees every host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.contracts import ServiceName

PREFIX = "gpuplane"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class InvalidSubjectToken(ValueError):
    """A host or service name that cannot be one NATS subject token."""


def token(value: str) -> str:
    """Turn a free-form name (a hostname with dots, say) into one safe subject token."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", value.strip())
    if not cleaned or not _TOKEN.match(cleaned):
        raise InvalidSubjectToken(f"cannot use {value!r} in a NATS subject")
    return cleaned


# Inventory, one subject per host.
INVENTORY_ALL = f"{PREFIX}.inventory.>"


def inventory(host: str) -> str:
    return f"{PREFIX}.inventory.{token(host)}"


# GPU health transitions, one subject per host.
GPU_HEALTH_ALL = f"{PREFIX}.gpu_health.>"


def gpu_health(host: str) -> str:
    return f"{PREFIX}.gpu_health.{token(host)}"


# Rescan: every detector listens (no queue group), so one request makes every host rescan.
DETECTOR_RESCAN = f"{PREFIX}.detector.rescan"

# Liveness.
HEARTBEAT_ALL = f"{PREFIX}.heartbeat.>"


def heartbeat(service: ServiceName) -> str:
    return f"{PREFIX}.heartbeat.{service.value}"


def health(service: ServiceName) -> str:
    """Request/reply health check, answered by one instance of the service (queue group)."""
    return f"{PREFIX}.svc.{service.value}.health"


# Planner requests (queue group: one planner instance answers).
PLANNER_CONFIG_GET = f"{PREFIX}.svc.planner.config.get"
PLANNER_CONFIG_PUT = f"{PREFIX}.svc.planner.config.put"
PLANNER_PREVIEW = f"{PREFIX}.svc.planner.preview"

PLANNER_CONFIG_RESTORE = f"{PREFIX}.svc.planner.config.restore"

# Every save of the GPU configuration; the latest is kept for late subscribers.
CONFIG_CHANGED = f"{PREFIX}.config.changed"

# Orchestrator requests (queue group) and its run progress events (the latest is kept).
ORCHESTRATOR_APPLY = f"{PREFIX}.svc.orchestrator.apply"
ORCHESTRATOR_ROLLBACK = f"{PREFIX}.svc.orchestrator.rollback"
ORCHESTRATOR_STATUS = f"{PREFIX}.svc.orchestrator.status"
ORCHESTRATOR_PROGRESS = f"{PREFIX}.orchestrator.progress"

# Work queues: each message is delivered to one consumer until it is acknowledged.
ORCHESTRATOR_WORK = f"{PREFIX}.work.orchestrator.apply"
ORCHESTRATOR_WORK_CONSUMER = "orchestrator-apply"

# Router requests: inference (queue group: one router places each request) and its view of the pools.
ROUTER_INFER = f"{PREFIX}.svc.router.infer"
ROUTER_STATE = f"{PREFIX}.svc.router.state"

# Workers: registration/heartbeat with load figures (every router listens), and each worker's own
# task subject (a router sends a task to the one worker it chose).
WORKER_STATUS_ALL = f"{PREFIX}.worker.status.>"


def worker_status(worker_id: str) -> str:
    return f"{PREFIX}.worker.status.{token(worker_id)}"


def worker_task(worker_id: str) -> str:
    return f"{PREFIX}.worker.task.{token(worker_id)}"


def stream_chunks(owner: str, request_id: str) -> str:
    """Chunks of one streamed answer, sent to whoever waits for them (a gateway, a router relay)."""
    return f"{PREFIX}.stream.{token(owner)}.{token(request_id)}"


def queue_group(service: ServiceName) -> str:
    return f"{PREFIX}-{service.value}"


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream: the latest events for late subscribers, or a work queue."""

    name: str
    subjects: tuple[str, ...]
    max_msgs_per_subject: int
    max_age_s: float
    work_queue: bool = False
    """Work-queue retention: a message is removed once a consumer acknowledges it."""


# Events a UI that connects late needs: the latest inventory of every host and the latest saved
# configuration, the progress of the last apply. Only a short history per subject is kept; the
# latest is what matters.
EVENTS_STREAM = StreamSpec(
    name="GPUPLANE_EVENTS",
    subjects=(INVENTORY_ALL, GPU_HEALTH_ALL, CONFIG_CHANGED, ORCHESTRATOR_PROGRESS),
    max_msgs_per_subject=16,
    max_age_s=7 * 24 * 3600.0,
)

WORK_STREAM = StreamSpec(
    name="GPUPLANE_WORK",
    subjects=(f"{PREFIX}.work.>",),
    max_msgs_per_subject=1024,
    max_age_s=24 * 3600.0,
    work_queue=True,
)

STREAMS: tuple[StreamSpec, ...] = (EVENTS_STREAM, WORK_STREAM)


def stream_for(subject: str) -> StreamSpec | None:
    """The stream whose subjects cover ``subject``, if any."""
    for spec in STREAMS:
        if any(matches(pattern, subject) for pattern in spec.subjects):
            return spec
    return None


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` is one token, ``>`` is one or more trailing tokens."""
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for i, p in enumerate(p_tokens):
        if p == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens):
            return False
        if p != "*" and p != s_tokens[i]:
            return False
    return len(p_tokens) == len(s_tokens)
