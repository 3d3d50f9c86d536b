"""Every NATS subject and stream gpuplane uses. Nothing else builds a subject string.

Naming: ``gpuplane.<topic>.<qualifier...>``. Per-host subjects end in the host name so that
``<prefix>.>`` sees every host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.contracts import GpuHealthChanged, Heartbeat, Inventory, Message, ServiceName, WorkerStatus

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
ORCHESTRATOR_ENDPOINTS = f"{PREFIX}.svc.orchestrator.endpoints"
"""Ask which placed services serve an OpenAI-compatible API, where (``ServiceEndpoints``)."""
ENDPOINTS_CHANGED = f"{PREFIX}.orchestrator.endpoints"
"""The orchestrator's ``ServiceEndpoints`` after every run: the agents follow them."""
AGENTS_DRAIN_ALL = f"{PREFIX}.agents.drain.*"


def agents_drain(host: str) -> str:
    """Ask the agents of ``host`` to stop sending new requests to a service about to be recreated."""
    return f"{PREFIX}.agents.drain.{token(host)}"


# Work queues: each message is delivered to one consumer until it is acknowledged.
ORCHESTRATOR_WORK = f"{PREFIX}.work.orchestrator.apply"
ORCHESTRATOR_WORK_CONSUMER = "orchestrator-apply"

# Router requests: inference (queue group: one router places each request) and its view of the pools.
ROUTER_INFER = f"{PREFIX}.svc.router.infer"
ROUTER_STATE = f"{PREFIX}.svc.router.state"

# Workers: registration/heartbeat with load figures (every router listens), and each worker's own
# task subject (a router sends a task to the one worker it chose). The host is a token of its own so
# that NATS permissions can let a worker identity speak only for its own host's workers.
WORKER_STATUS_ALL = f"{PREFIX}.worker.status.>"
WORKER_TASK_ALL = f"{PREFIX}.worker.task.>"
WORKER_HELD_ALL = f"{PREFIX}.worker.held.>"


def worker_status(host: str, worker_id: str) -> str:
    return f"{PREFIX}.worker.status.{token(host)}.{token(worker_id)}"


def worker_task(host: str, worker_id: str) -> str:
    return f"{PREFIX}.worker.task.{token(host)}.{token(worker_id)}"


def worker_held(host: str, worker_id: str) -> str:
    """Ask one worker which of the given tasks it still holds (a router looking for lost answers)."""
    return f"{PREFIX}.worker.held.{token(host)}.{token(worker_id)}"


# Every router answers: which of these inference requests do you hold? (a gateway looking for lost answers)
ROUTER_HELD = f"{PREFIX}.router.held"

# Streamed answers: chunks go to the process that waits for them, a router's relay or a gateway. The
# owner's kind is a token of its own so that each identity may publish only towards the next hop.
STREAM_TO_ROUTER = f"{PREFIX}.stream.router.>"
STREAM_TO_API = f"{PREFIX}.stream.api.>"


def stream_chunks(owner: ServiceName, instance: str, request_id: str) -> str:
    """Chunks of one streamed answer, sent to the ``owner`` process ``instance`` that waits for them."""
    if owner not in (ServiceName.ROUTER, ServiceName.API):
        raise InvalidSubjectToken(f"streamed answers go to a router or a gateway, not to a {owner.value}")
    return f"{PREFIX}.stream.{owner.value}.{token(instance)}.{token(request_id)}"


# The audit trail: every change of state made through the gateway, who made it and from where.
AUDIT_ALL = f"{PREFIX}.audit.>"


def audit(action: str) -> str:
    return f"{PREFIX}.audit.{token(action)}"


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
# configuration, the progress of the last apply, the latest audit record of each action. Only a
# short history per subject is kept; the latest is what matters (the audit trail itself is in
# PostgreSQL).
EVENTS_STREAM = StreamSpec(
    name="GPUPLANE_EVENTS",
    subjects=(INVENTORY_ALL, GPU_HEALTH_ALL, CONFIG_CHANGED, ORCHESTRATOR_PROGRESS, AUDIT_ALL),
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


def sender_subject(message: Message) -> str | None:
    """The subject a message that names its sender (a host, a worker, a service) must arrive on.

    NATS permissions let an identity publish only on its own subjects; a body that claims another
    sender than its subject says is forged, and the bus drops it. None: the message names no sender.
    """
    if isinstance(message, Inventory):
        return inventory(message.host)
    if isinstance(message, GpuHealthChanged):
        return gpu_health(message.host)
    if isinstance(message, WorkerStatus):
        return worker_status(message.host, message.worker_id)
    if isinstance(message, Heartbeat):
        return heartbeat(message.service)
    return None
