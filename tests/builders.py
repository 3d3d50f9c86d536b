"""Builders for contract objects in tests: sensible defaults, override only what a test is about."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import EllipsisType

from services.detector.core import precision_support
from services.planner.catalog import load_catalog
from services.planner.core.model import GpuSlot, Pin, Precision, Problem, Role, ServiceSpec, mb
from services.router.core.model import PlacementRequest, WorkerSnapshot
from shared.contracts import (
    Gpu,
    InferenceKind,
    Inventory,
    InventoryChange,
    InventorySource,
    Priority,
    WorkerState,
    WorkerStatus,
)

FIXED_TIME = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
"""A fixed instant, so builders never read the clock."""


def make_gpu(
    index: int = 0,
    *,
    name: str = "NVIDIA RTX A5500",
    uuid: str | None = None,
    pci_bus_id: str | None = None,
    vram_total_mb: int = 24564,
    vram_used_mb: int = 0,
    vram_free_mb: int | None = None,
    utilization_percent: float | None = 0.0,
    compute_capability: str | None = "8.6",
    supports_fp16: bool | None = None,
    supports_bf16: bool | None = None,
    temperature_c: float | None = 35.0,
    power_draw_w: float | None = 20.0,
    power_limit_w: float | None = 230.0,
    sm_count: int | None = 80,
    max_sm_clock_mhz: int | None = 1665,
    nvlink_peers: tuple[int, ...] = (),
    healthy: bool = True,
    health_reason: str | None = None,
) -> Gpu:
    """A GPU like the reference RTX A5500; uuid and bus id follow from ``index`` unless given.

    ``vram_free_mb`` defaults to total - used; fp16/bf16 default to what the compute
    capability implies (fp16 from 5.3, bf16 from 8.0).
    """
    fp16, bf16 = precision_support(compute_capability)
    return Gpu(
        index=index,
        uuid=uuid if uuid is not None else f"GPU-00000000-0000-4000-8000-{index:012x}",
        name=name,
        pci_bus_id=pci_bus_id if pci_bus_id is not None else f"00000000:{index + 1:02X}:00.0",
        vram_total_mb=vram_total_mb,
        vram_used_mb=vram_used_mb,
        vram_free_mb=vram_free_mb if vram_free_mb is not None else vram_total_mb - vram_used_mb,
        utilization_percent=utilization_percent,
        compute_capability=compute_capability,
        supports_fp16=supports_fp16 if supports_fp16 is not None else fp16,
        supports_bf16=supports_bf16 if supports_bf16 is not None else bf16,
        temperature_c=temperature_c,
        power_draw_w=power_draw_w,
        power_limit_w=power_limit_w,
        sm_count=sm_count,
        max_sm_clock_mhz=max_sm_clock_mhz,
        nvlink_peers=nvlink_peers,
        healthy=healthy,
        health_reason=health_reason,
    )


def make_inventory(
    gpus: tuple[Gpu, ...] | None = None,
    *,
    host: str = "box-a",
    source: InventorySource = InventorySource.SIMULATED,
    detected_at: datetime = FIXED_TIME,
    sequence: int = 1,
    changes: tuple[InventoryChange, ...] = (),
    problems: tuple[str, ...] = (),
    fleet_file: str | None = None,
) -> Inventory:
    """An inventory of ``gpus`` (default: two reference GPUs, indices 0 and 1) at a fixed time."""
    return Inventory(
        host=host,
        source=source,
        gpus=gpus if gpus is not None else (make_gpu(0), make_gpu(1)),
        detected_at=detected_at,
        sequence=sequence,
        changes=changes,
        problems=problems,
        fleet_file=fleet_file,
    )


# --- Planner ---------------------------------------------------------------------------------

REFERENCE_CATALOG_FILE = Path(__file__).resolve().parents[1] / "config" / "services.yml"


def make_service(
    name: str = "svc",
    vram_gb: float = 1.0,
    *,
    adjustable: bool = False,
    min_gb: float | None = None,
    critical: bool = False,
    role: Role = Role.OTHER,
    gpus: int = 1,
    precision: Precision | None = None,
    short_name: str | None = None,
    model: str | None = None,
) -> ServiceSpec:
    """A catalog entry of ``vram_gb`` (1 GB = 1024 MiB); the model defaults to ``<name>-model``."""
    return ServiceSpec(
        name=name,
        model=model if model is not None else f"{name}-model",
        vram_mb=mb(vram_gb),
        budget_adjustable=adjustable,
        min_vram_mb=mb(min_gb) if min_gb is not None else None,
        critical_path=critical,
        role=role,
        gpu_count=gpus,
        precision=precision,
        short_name=short_name,
    )


def make_slot(
    index: int = 0,
    *,
    host: str = "box-a",
    vram_gb: float = 24.0,
    capacity_mb: int | None = None,
    speed: float = 34.1,
    nvlink: tuple[int, ...] = (),
    healthy: bool = True,
    health_reason: str | None = None,
    bf16: bool = True,
    name: str = "NVIDIA RTX A5500",
) -> GpuSlot:
    """A GPU as the planner sees it; ``capacity_mb`` wins over ``vram_gb`` when given."""
    return GpuSlot(
        host=host,
        index=index,
        uuid=f"GPU-{host}-{index}",
        name=name,
        capacity_mb=capacity_mb if capacity_mb is not None else mb(vram_gb),
        speed=speed,
        speed_basis="test",
        nvlink_peers=frozenset(nvlink),
        supports_bf16=bf16,
        compute_capability="8.6" if bf16 else "7.5",
        healthy=healthy,
        health_reason=health_reason,
    )


def reference_catalog() -> tuple[ServiceSpec, ...]:
    """The shipped default catalog (config/services.yml), so tests follow that file."""
    return load_catalog(REFERENCE_CATALOG_FILE)[0]


def make_problem(
    gpus: Sequence[GpuSlot] = (),
    services: Sequence[ServiceSpec] = (),
    *,
    pins: Sequence[Pin] = (),
    headroom_mb: int = 512,
) -> Problem:
    """A planner snapshot straight from slots and specs (no inventory in between)."""
    return Problem(gpus=tuple(gpus), services=tuple(services), pins=tuple(pins), headroom_mb=headroom_mb)


def make_reference_gpus() -> tuple[Gpu, Gpu]:
    """deploy/fleets/reference.yaml: RTX A5500 (24564 MiB, 80 SMs) and RTX A400 (4094 MiB, 6 SMs)."""
    return (
        make_gpu(0, vram_total_mb=24564, sm_count=80, max_sm_clock_mhz=1665),
        make_gpu(1, name="NVIDIA RTX A400", vram_total_mb=4094, sm_count=6, max_sm_clock_mhz=1762),
    )


def make_rtx3090(index: int = 0, *, nvlink_peers: tuple[int, ...] = (), healthy: bool = True) -> Gpu:
    """An RTX 3090 like deploy/fleets/dual-3090-nvlink.yaml (24576 MiB, 82 SMs at 1695 MHz)."""
    return make_gpu(
        index,
        name="NVIDIA GeForce RTX 3090",
        vram_total_mb=24576,
        sm_count=82,
        max_sm_clock_mhz=1695,
        nvlink_peers=nvlink_peers,
        healthy=healthy,
        health_reason=None if healthy else "NVML: GPU is lost",
    )


# --- Router ----------------------------------------------------------------------------------


def make_worker_status(
    worker_id: str = "w0",
    *,
    device: str = "cuda:0",
    host: str = "box-a",
    slots: int = 1,
    in_flight: int = 0,
    queue_depth: int = 0,
    groups: tuple[str, ...] = (),
    cpu_cached_groups: tuple[str, ...] = (),
    current_group: str | None = None,
    models: tuple[str, ...] = ("model-a",),
    latency_avg_s: float = 0.0,
    error_count: int = 0,
    request_count: int = 0,
    state: WorkerState = WorkerState.READY,
    sequence: int = 1,
    gpu_index: int | None | EllipsisType = ...,
    exclusive_request: str | None = None,
    backend: str = "simulated",
) -> WorkerStatus:
    """A worker's heartbeat at a fixed time; ``gpu_index`` follows from ``cuda:N`` (None on cpu) unless given."""
    if isinstance(gpu_index, EllipsisType):
        gpu_index = int(device.removeprefix("cuda:")) if device.startswith("cuda:") else None
    return WorkerStatus(
        worker_id=worker_id,
        host=host,
        device=device,
        gpu_index=gpu_index,
        backend=backend,
        state=state,
        slots=slots,
        in_flight=in_flight,
        queue_depth=queue_depth,
        groups_loaded=groups,
        current_group=current_group if current_group is not None else (groups[0] if groups else None),
        cpu_cached_groups=cpu_cached_groups,
        models=models,
        latency_avg_s=latency_avg_s,
        error_count=error_count,
        request_count=request_count,
        exclusive_request=exclusive_request,
        sequence=sequence,
        at=FIXED_TIME,
    )


def make_snapshot(
    worker_id: str = "w0",
    *,
    host: str = "box-a",
    device: str = "cuda:0",
    slots: int = 1,
    load: int = 0,
    groups: tuple[str, ...] = (),
    cpu_cached_groups: tuple[str, ...] = (),
    latency_avg_s: float = 0.0,
    error_rate: float = 0.0,
    has_room: bool = True,
    speed: float = 1.0,
) -> WorkerSnapshot:
    """A worker as a routing policy sees it."""
    return WorkerSnapshot(
        worker_id=worker_id,
        host=host,
        device=device,
        slots=slots,
        load=load,
        groups_loaded=frozenset(groups),
        cpu_cached_groups=frozenset(cpu_cached_groups),
        current_group=groups[0] if groups else None,
        latency_avg_s=latency_avg_s,
        error_rate=error_rate,
        has_room=has_room,
        speed=speed,
    )


def make_placement_request(
    model: str = "model-a",
    *,
    group: str = "group-a",
    request_id: str = "r1",
    kind: InferenceKind = InferenceKind.CHAT,
    priority: Priority = Priority.NORMAL,
    group_load_s: float = 5.0,
    cpu_reload_fraction: float = 0.2,
    expected_latency_s: float = 0.5,
    small: bool = True,
    avoid: Sequence[str] = (),
) -> PlacementRequest:
    """The facts placement looks at for one request of ``model`` (in ``group``)."""
    return PlacementRequest(
        request_id=request_id,
        kind=kind,
        model=model,
        group=group,
        priority=priority,
        group_load_s=group_load_s,
        cpu_reload_fraction=cpu_reload_fraction,
        expected_latency_s=expected_latency_s,
        small=small,
        avoid=frozenset(avoid),
    )
