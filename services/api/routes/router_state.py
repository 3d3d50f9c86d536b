"""/api/gpu_stats, /api/models and /api/queue: the data plane's view of the pools, in the shapes older clients read.

Each is the gateway's own router's ``RouterState``; the transforms below are pure so they are tested without HTTP.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from services.api.deps import DataPlaneDep
from services.api.schemas import (
    DeviceStatsOut,
    ErrorOut,
    GpuStatsOut,
    GroupDeviceOut,
    GroupModelOut,
    ModelGroupOut,
    ModelGroupsOut,
    QueueOut,
    RouterQueueOut,
    WorkerQueueOut,
)
from shared.contracts import DeviceStats, Priority, RouterState, WorkerView

router = APIRouter(prefix="/api", tags=["router"])

UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "No router is running (or the gateway is not connected to NATS)."}
}


def spans_hosts(state: RouterState) -> bool:
    """Whether the router's devices and workers are on more than one host (labels then name the host)."""
    hosts = {d.host for d in state.devices} | {w.status.host for w in state.workers}
    return len(hosts) > 1


def device_label(host: str, device: str, multi_host: bool) -> str:
    """``cuda:N`` (or ``cpu``), written ``host/cuda:N`` where several hosts serve."""
    return f"{host}/{device}" if multi_host else device


def device_order(host: str, device: str) -> tuple[bool, str, int, str]:
    """GPUs before CPUs, then by host, then by index (cuda:10 after cuda:9)."""
    _, _, index = device.partition(":")
    return (not device.startswith("cuda"), host, int(index) if index.isdigit() else -1, device)


def _stats(d: DeviceStats) -> DeviceStatsOut:
    return DeviceStatsOut(
        utilization=round(d.utilization, 1),
        memory_used=round(d.memory_used, 1),
        memory_total=round(d.memory_total, 1),
        memory_percent=round(d.memory_percent, 1),
        peak_utilization=round(d.peak_utilization, 1),
    )


def gpu_stats(state: RouterState) -> GpuStatsOut:
    """Figures per GPU, plus the first GPU's repeated at the top level; ``available`` false (and the
    top-level figures null) when the router knows no GPU."""
    multi = spans_hosts(state)
    gpus = sorted(
        (d for d in state.devices if d.device.startswith("cuda")), key=lambda d: device_order(d.host, d.device)
    )
    if not gpus:
        return GpuStatsOut(available=False, devices={})
    devices = {device_label(d.host, d.device, multi): _stats(d) for d in gpus}
    return GpuStatsOut(available=True, devices=devices, **_stats(gpus[0]).model_dump())


def _live_holding(workers: tuple[WorkerView, ...], group_id: str) -> list[WorkerView]:
    return [w for w in workers if w.alive and group_id in w.status.groups_loaded]


def loaded_on(state: RouterState, group_id: str) -> list[str]:
    """Labels of the devices where a live worker holds ``group_id``, in device order."""
    multi = spans_hosts(state)
    where = {(w.status.host, w.status.device) for w in _live_holding(state.workers, group_id)}
    return [device_label(host, device, multi) for host, device in sorted(where, key=lambda hd: device_order(*hd))]


def model_groups(state: RouterState) -> ModelGroupsOut:
    """Every model group with, per worker device, whether it is loaded there and current there."""
    multi = spans_hosts(state)
    devices = sorted({(w.status.host, w.status.device) for w in state.workers}, key=lambda hd: device_order(*hd))
    groups: list[ModelGroupOut] = []
    for group in state.groups:
        holding = _live_holding(state.workers, group.group_id)
        loaded = loaded_on(state, group.group_id)
        groups.append(
            ModelGroupOut(
                group_id=group.group_id,
                vram_gb=group.vram_gb,
                load_time_s=group.load_time_s,
                device_info=[
                    GroupDeviceOut(
                        device=device_label(host, device, multi),
                        has_group=any((w.status.host, w.status.device) == (host, device) for w in holding),
                        is_current=any(
                            (w.status.host, w.status.device) == (host, device)
                            and w.status.current_group == group.group_id
                            for w in holding
                        ),
                    )
                    for host, device in devices
                ],
                models=[
                    GroupModelOut(id=m.id, kind=m.kind.value, small=m.small, loaded_on_devices=loaded)
                    for m in group.models
                ],
            )
        )
    return ModelGroupsOut(model_groups=groups)


def _worker(view: WorkerView) -> WorkerQueueOut:
    s = view.status
    return WorkerQueueOut(
        worker_id=s.worker_id,
        host=s.host,
        device=s.device,
        backend=s.backend,
        engine=s.engine,
        state=s.state.value,
        slots=s.slots,
        in_flight=s.in_flight,
        queue_size=s.queue_depth,
        busy=s.in_flight > 0,
        groups_loaded=list(s.groups_loaded),
        current_group=s.current_group,
        latency_avg_s=s.latency_avg_s,
        error_count=s.error_count,
        request_count=s.request_count,
        alive=view.alive,
        gpu_healthy=view.gpu_healthy,
        circuit=view.circuit,
        eligible=view.eligible,
        why_not=view.why_not,
    )


def queue(state: RouterState) -> QueueOut:
    """The router's queue by priority (every priority named, zero included) and each worker's load."""
    workers = sorted(state.workers, key=lambda w: (*device_order(w.status.host, w.status.device), w.status.worker_id))
    return QueueOut(
        router=RouterQueueOut(
            router=state.router,
            policy=state.policy,
            queued={p.value: state.queued.get(p.value, 0) for p in Priority},
            queue_limit=state.queue_limit,
            in_flight=state.in_flight,
        ),
        workers=[_worker(w) for w in workers],
        decisions=list(state.decisions),
    )


async def router_state(plane: DataPlaneDep) -> RouterState:
    """The state of this gateway's data plane: every worker's figures (as every router sees them), and the
    queue and decisions of the /v1 requests this gateway placed."""
    return plane.state()


RouterStateDep = Annotated[RouterState, Depends(router_state)]


@router.get("/gpu_stats", response_model=GpuStatsOut, responses=UNAVAILABLE, summary="GPU load (older clients)")
async def get_gpu_stats(view: RouterStateDep) -> GpuStatsOut:
    """Utilization and memory (GB) per GPU as the router sees them; the top-level figures are the first GPU's."""
    return gpu_stats(view)


@router.get("/models", response_model=ModelGroupsOut, responses=UNAVAILABLE, summary="Model groups (older clients)")
async def get_models(view: RouterStateDep) -> ModelGroupsOut:
    """Model groups, their models, and on which devices each group is loaded or current."""
    return model_groups(view)


@router.get("/queue", response_model=QueueOut, responses=UNAVAILABLE, summary="Router queue and worker load")
async def get_queue(view: RouterStateDep) -> QueueOut:
    """Requests waiting in the router by priority, and every worker's slots, load, health and eligibility."""
    return queue(view)
