"""Who may say what on NATS: the permission table, checked as a table (the real server applies it in
tests/services/stack/test_up_security.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.contracts import ServiceName
from shared.identities import Identity, inbox_prefix, permissions, render_users
from shared.subjects import (
    CONFIG_CHANGED,
    DETECTOR_RESCAN,
    ENDPOINTS_CHANGED,
    ORCHESTRATOR_APPLY,
    ORCHESTRATOR_ENDPOINTS,
    ORCHESTRATOR_PROGRESS,
    ORCHESTRATOR_WORK,
    PLANNER_CONFIG_PUT,
    PLANNER_CONFIG_RESTORE,
    ROUTER_INFER,
    agents_drain,
    audit,
    gpu_health,
    health,
    heartbeat,
    inventory,
    matches,
    stream_chunks,
    worker_status,
    worker_task,
)

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("vm",)


def may_publish(identity: Identity, subject: str) -> bool:
    perms = permissions(identity, HOSTS if identity.per_host else None)
    return any(matches(p, subject) for p in perms.publish)


def may_subscribe(identity: Identity, subject: str) -> bool:
    perms = permissions(identity, HOSTS if identity.per_host else None)
    return any(matches(p, subject) for p in perms.subscribe)


ONLY_PUBLISHER = [
    (inventory("vm"), {Identity.DETECTOR}),
    (gpu_health("vm"), {Identity.DETECTOR}),
    (inventory("evil"), set()),
    (CONFIG_CHANGED, {Identity.PLANNER}),
    (ORCHESTRATOR_PROGRESS, {Identity.ORCHESTRATOR}),
    (ORCHESTRATOR_WORK, {Identity.ORCHESTRATOR}),
    (PLANNER_CONFIG_RESTORE, {Identity.ORCHESTRATOR}),
    (PLANNER_CONFIG_PUT, {Identity.API}),
    (ORCHESTRATOR_APPLY, {Identity.API}),
    (DETECTOR_RESCAN, {Identity.API}),
    (ROUTER_INFER, {Identity.API}),
    (worker_task("vm", "vm-cuda0"), {Identity.ROUTER, Identity.API}),  # the gateway hosts a dispatcher
    (worker_status("vm", "vm-cuda0"), {Identity.WORKER}),
    (worker_status("evil", "evil-cuda0"), set()),
    (stream_chunks(ServiceName.ROUTER, "r1", "t1"), {Identity.WORKER}),
    (stream_chunks(ServiceName.API, "a1", "q1"), {Identity.ROUTER, Identity.WORKER}),
    (audit("config_save"), {Identity.API}),
    (heartbeat(ServiceName.PLANNER), {Identity.PLANNER}),
    ("$JS.API.STREAM.CREATE.GPUPLANE_EVENTS", {Identity.ADMIN}),
    ("$JS.API.STREAM.UPDATE.GPUPLANE_WORK", {Identity.ADMIN}),
    ("$JS.API.STREAM.DELETE.GPUPLANE_EVENTS", {Identity.ADMIN}),
    ("$JS.API.STREAM.PURGE.GPUPLANE_EVENTS", {Identity.ADMIN}),
    ("$JS.ACK.GPUPLANE_WORK.orchestrator-apply.1.1.1.1.1", {Identity.ORCHESTRATOR}),
    (ENDPOINTS_CHANGED, {Identity.ORCHESTRATOR}),  # where placed services run: agents follow it
    (agents_drain("vm"), {Identity.ORCHESTRATOR}),  # only the orchestrator stops traffic to a service
    (ORCHESTRATOR_ENDPOINTS, {Identity.WORKER}),  # the agents ask; nobody else needs to
]


@pytest.mark.parametrize(("subject", "who"), ONLY_PUBLISHER, ids=[s for s, _ in ONLY_PUBLISHER])
def test_only_the_owner_publishes(subject: str, who: set[Identity]) -> None:
    assert {i for i in Identity if may_publish(i, subject)} == who


ONLY_READER = [
    (ROUTER_INFER, {Identity.ROUTER}),
    (worker_task("vm", "vm-cuda0"), {Identity.WORKER}),
    (worker_task("evil", "evil-cuda0"), set()),
    (ORCHESTRATOR_APPLY, {Identity.ORCHESTRATOR}),
    (PLANNER_CONFIG_PUT, {Identity.PLANNER}),
    (stream_chunks(ServiceName.API, "a1", "q1"), {Identity.API}),
    (stream_chunks(ServiceName.ROUTER, "r1", "t1"), {Identity.ROUTER}),
    (f"{inbox_prefix(Identity.API)}.abc.1", {Identity.API}),
    (f"{inbox_prefix(Identity.ROUTER)}.abc.1", {Identity.ROUTER}),
    (agents_drain("vm"), {Identity.WORKER}),
    (agents_drain("evil"), set()),  # a worker hears the drains of its own hosts only
    (ORCHESTRATOR_ENDPOINTS, {Identity.ORCHESTRATOR}),
]


@pytest.mark.parametrize(("subject", "who"), ONLY_READER, ids=[s for s, _ in ONLY_READER])
def test_requests_prompts_and_answers_reach_only_their_addressee(subject: str, who: set[Identity]) -> None:
    assert {i for i in Identity if may_subscribe(i, subject)} == who


def test_the_observer_publishes_nothing_of_gpuplanes_and_reads_events_only() -> None:
    perms = permissions(Identity.OBSERVER)
    assert not perms.allow_responses
    assert all(p.startswith("$JS.API.STREAM.") or p.startswith("$JS.API.DIRECT.GET.") for p in perms.publish)
    assert not any("CREATE" in p or "UPDATE" in p or "DELETE" in p for p in perms.publish)
    events = (inventory("vm"), CONFIG_CHANGED, worker_status("vm", "w"), audit("apply"), heartbeat(ServiceName.API))
    for event in events:
        assert may_subscribe(Identity.OBSERVER, event), event
    for private in (ROUTER_INFER, worker_task("vm", "w"), "gpuplane.>", health(ServiceName.ROUTER)):
        assert not may_subscribe(Identity.OBSERVER, private), private


def test_each_service_heartbeats_only_as_itself() -> None:
    for service in ServiceName:
        speakers = {i for i in Identity if may_publish(i, heartbeat(service))}
        assert speakers == {Identity.of(service)}


def test_hosts_limit_detectors_and_workers_and_default_to_any() -> None:
    assert any(matches(p, inventory("anything")) for p in permissions(Identity.DETECTOR).publish)
    narrow = permissions(Identity.DETECTOR, ["box-a", "gpu.lan"]).publish
    assert inventory("gpu.lan") in narrow and inventory("box-a") in narrow
    assert not any(matches(p, inventory("box-b")) for p in narrow)


def test_the_compose_nats_config_carries_exactly_these_permissions() -> None:
    text = (REPO / "deploy/nats/nats.conf").read_text()
    block = render_users({i: f"$GPUPLANE_NATS_{i.value.upper()}_PASSWORD" for i in Identity})
    assert block in text, "deploy/nats/nats.conf is out of date: `gpuplane nats-config --passwords env`"
