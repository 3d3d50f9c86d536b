"""Who may say what on NATS: one identity per process kind, and the subjects each may use.

This table is the one source of the permissions: ``gpuplane up`` renders it into the embedded
nats-server's config, ``deploy/nats/nats.conf`` is rendered from it (a test keeps the two equal),
and ``docs/security.md`` explains it. Everything not allowed here is refused by the server.

The rules, in words: only detectors publish inventory and GPU health (each only for its own hosts);
only the planner answers the planner's requests and only the orchestrator the orchestrator's, and
only the orchestrator asks the planner to restore a revision; only the orchestrator takes work from
the work queue; only workers publish worker status and answer tasks (each only for its own hosts);
only the router sends tasks; only the gateway asks the services to change anything; the observer
reads events and nothing else; only ``admin`` (used by ``gpuplane up`` and ``gpuplane nats-init``)
may create or change the JetStream streams. Each identity reads replies on its own inbox prefix only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from shared.contracts import ServiceName
from shared.subjects import (
    AGENTS_DRAIN_ALL,
    AUDIT_ALL,
    CONFIG_CHANGED,
    DETECTOR_RESCAN,
    ENDPOINTS_CHANGED,
    EVENTS_STREAM,
    GPU_HEALTH_ALL,
    HEARTBEAT_ALL,
    INVENTORY_ALL,
    ORCHESTRATOR_APPLY,
    ORCHESTRATOR_ENDPOINTS,
    ORCHESTRATOR_PROGRESS,
    ORCHESTRATOR_ROLLBACK,
    ORCHESTRATOR_STATUS,
    ORCHESTRATOR_WORK,
    ORCHESTRATOR_WORK_CONSUMER,
    PLANNER_CONFIG_GET,
    PLANNER_CONFIG_PUT,
    PLANNER_CONFIG_RESTORE,
    PLANNER_PREVIEW,
    PREFIX,
    ROUTER_HELD,
    ROUTER_INFER,
    ROUTER_STATE,
    STREAM_TO_API,
    STREAM_TO_ROUTER,
    STREAMS,
    WORK_STREAM,
    WORKER_HELD_ALL,
    WORKER_STATUS_ALL,
    WORKER_TASK_ALL,
    health,
    heartbeat,
    token,
)

JS_API = "$JS.API"


class Identity(StrEnum):
    """A NATS user: one per process kind, plus a read-only observer and the stream administrator."""

    DETECTOR = "detector"
    PLANNER = "planner"
    ORCHESTRATOR = "orchestrator"
    ROUTER = "router"
    WORKER = "worker"
    API = "api"
    OBSERVER = "observer"
    """Reads events (inventory, health, heartbeats, configuration, progress, worker status, audit): ``gpuplane
    watch``, ``gpuplane gpus``, dashboards. Publishes nothing, sees no request, prompt or answer."""
    ADMIN = "admin"
    """Creates and updates the JetStream streams; used by ``gpuplane up`` and ``gpuplane nats-init`` only."""

    @classmethod
    def of(cls, service: ServiceName) -> Identity:
        return cls(service.value)

    @property
    def per_host(self) -> bool:
        """Whether this identity's subjects name the hosts it speaks for."""
        return self in (Identity.DETECTOR, Identity.WORKER)


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """May answer the requests it receives (once each), whatever their reply subject."""


def inbox_prefix(identity: Identity) -> str:
    """Where this identity's replies arrive; only it may subscribe there."""
    return f"_INBOX.{identity.value}"


def _stream_reads() -> tuple[str, ...]:
    """Read the stored events (``Bus.latest``) and check that the streams exist."""
    events = EVENTS_STREAM.name
    infos = tuple(f"{JS_API}.STREAM.INFO.{spec.name}" for spec in STREAMS)
    return (*infos, f"{JS_API}.STREAM.MSG.GET.{events}", f"{JS_API}.DIRECT.GET.{events}.>")


def _work_consumer() -> tuple[str, ...]:
    stream, consumer = WORK_STREAM.name, ORCHESTRATOR_WORK_CONSUMER
    return (
        f"{JS_API}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"{JS_API}.CONSUMER.INFO.{stream}.{consumer}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    )


def host_tokens(hosts: Iterable[str] | None) -> tuple[str, ...]:
    """The subject tokens of the hosts an identity may speak for; ``*`` (any) when none are named."""
    tokens = tuple(sorted({token(h) for h in hosts or ()}))
    return tokens or ("*",)


def permissions(identity: Identity, hosts: Iterable[str] | None = None) -> Permissions:
    """What ``identity`` may publish and subscribe to; ``hosts`` limits detectors and workers to those hosts."""
    own = host_tokens(hosts)
    inbox = f"{inbox_prefix(identity)}.>"
    reads = _stream_reads()
    if identity is Identity.DETECTOR:
        return Permissions(
            publish=(
                *(f"{PREFIX}.inventory.{h}" for h in own),
                *(f"{PREFIX}.gpu_health.{h}" for h in own),
                heartbeat(ServiceName.DETECTOR),
                *reads,
            ),
            subscribe=(DETECTOR_RESCAN, health(ServiceName.DETECTOR), inbox),
            allow_responses=True,
        )
    if identity is Identity.PLANNER:
        return Permissions(
            publish=(CONFIG_CHANGED, heartbeat(ServiceName.PLANNER), *reads),
            subscribe=(f"{PREFIX}.svc.planner.>", INVENTORY_ALL, inbox),
            allow_responses=True,
        )
    if identity is Identity.ORCHESTRATOR:
        return Permissions(
            publish=(
                ORCHESTRATOR_PROGRESS,
                ORCHESTRATOR_WORK,
                ENDPOINTS_CHANGED,
                AGENTS_DRAIN_ALL,
                heartbeat(ServiceName.ORCHESTRATOR),
                PLANNER_CONFIG_GET,
                PLANNER_CONFIG_RESTORE,
                *reads,
                *_work_consumer(),
            ),
            subscribe=(f"{PREFIX}.svc.orchestrator.>", inbox),
            allow_responses=True,
        )
    if identity is Identity.ROUTER:
        return Permissions(
            publish=(WORKER_TASK_ALL, WORKER_HELD_ALL, STREAM_TO_API, heartbeat(ServiceName.ROUTER), *reads),
            subscribe=(
                f"{PREFIX}.svc.router.>",
                ROUTER_HELD,
                WORKER_STATUS_ALL,
                INVENTORY_ALL,
                STREAM_TO_ROUTER,
                inbox,
            ),
            allow_responses=True,
        )
    if identity is Identity.WORKER:
        return Permissions(
            publish=(
                *(f"{PREFIX}.worker.status.{h}.*" for h in own),
                # The agents of placed services ask where those run.
                ORCHESTRATOR_ENDPOINTS,
                # Chunks of a task sent through the worker, to the router or gateway that sent it.
                STREAM_TO_ROUTER,
                STREAM_TO_API,
                heartbeat(ServiceName.WORKER),
                *reads,
            ),
            subscribe=(
                *(f"{PREFIX}.worker.task.{h}.*" for h in own),
                *(f"{PREFIX}.worker.held.{h}.*" for h in own),
                *(f"{PREFIX}.inventory.{h}" for h in own),
                *(f"{PREFIX}.agents.drain.{h}" for h in own),
                ENDPOINTS_CHANGED,
                health(ServiceName.WORKER),
                inbox,
            ),
            allow_responses=True,
        )
    if identity is Identity.API:
        return Permissions(
            publish=(
                DETECTOR_RESCAN,
                PLANNER_CONFIG_GET,
                PLANNER_CONFIG_PUT,
                PLANNER_PREVIEW,
                ORCHESTRATOR_APPLY,
                ORCHESTRATOR_ROLLBACK,
                ORCHESTRATOR_STATUS,
                ROUTER_INFER,
                ROUTER_STATE,
                ROUTER_HELD,
                # The gateway's data plane sends through a worker whose engine it cannot reach directly.
                WORKER_TASK_ALL,
                WORKER_HELD_ALL,
                *(health(s) for s in ServiceName),
                AUDIT_ALL,
                heartbeat(ServiceName.API),
                *reads,
            ),
            # The console's live events (routes/events.py) are the observer's events.
            subscribe=(*OBSERVER_EVENTS, STREAM_TO_API, health(ServiceName.API), inbox),
            allow_responses=True,
        )
    if identity is Identity.OBSERVER:
        return Permissions(publish=reads, subscribe=(*OBSERVER_EVENTS, inbox))
    return Permissions(publish=(f"{JS_API}.>",), subscribe=(inbox,))


OBSERVER_EVENTS: tuple[str, ...] = (
    INVENTORY_ALL,
    GPU_HEALTH_ALL,
    HEARTBEAT_ALL,
    CONFIG_CHANGED,
    ORCHESTRATOR_PROGRESS,
    WORKER_STATUS_ALL,
    AUDIT_ALL,
)
"""Everything the observer may watch: events, never requests, prompts or answers."""


def _quoted(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def render_users(passwords: Mapping[Identity, str], hosts: Iterable[str] | None = None) -> str:
    """The ``authorization`` block of a nats-server config: one user per identity with its permissions.

    ``passwords`` maps each identity to what goes in its ``password`` field: a bcrypt hash (``$2b$...``,
    written quoted) or a ``$VARIABLE`` that nats-server reads from its environment (written bare).
    """
    host_list = tuple(hosts or ())
    lines = ["authorization {", "  users = ["]
    for identity, password in passwords.items():
        perms = permissions(identity, host_list if identity.per_host else None)
        secret = password if password.startswith("$") and not password.startswith("$2") else json.dumps(password)
        lines += [
            "    {",
            f"      user: {json.dumps(identity.value)}",
            f"      password: {secret}",
            "      permissions: {",
            f"        publish: {{ allow: {_quoted(perms.publish)} }}",
            f"        subscribe: {{ allow: {_quoted(perms.subscribe)} }}",
        ]
        if perms.allow_responses:
            lines.append("        allow_responses: true")
        lines += ["      }", "    }"]
    lines += ["  ]", "}"]
    return "\n".join(lines)
