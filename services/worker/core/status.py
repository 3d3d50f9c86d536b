"""Turning the pool's counters and the backend's state into the ``WorkerStatus`` routers read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.worker.core.pool import Pool
from shared.contracts import EngineSignals, WorkerState, WorkerStatus


@dataclass(frozen=True)
class WorkerIdentity:
    """What does not change while a worker runs."""

    worker_id: str
    host: str
    device: str
    backend: str
    slots: int
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    gpu_name: str | None = None
    vram_total_mb: int | None = None
    speed: float | None = None
    """Relative to the reference GPU (the catalog's latencies are for it)."""
    engine_url: str | None = None
    """The OpenAI base URL (``http://host:port/v1``) the data plane sends requests to directly; None: over NATS only."""


@dataclass(frozen=True)
class BackendState:
    """What a backend holds now."""

    groups_loaded: tuple[str, ...] = ()
    current_group: str | None = None
    cpu_cached_groups: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    vram_used_mb: int | None = None
    engine: EngineSignals | None = None
    """The engine's own figures (an upstream engine's metrics); None: it gives none, or this is the simulated one."""


def build_status(
    identity: WorkerIdentity,
    state: WorkerState,
    pool: Pool,
    backend: BackendState,
    *,
    sequence: int,
    utilization_percent: float | None,
    at: datetime,
) -> WorkerStatus:
    """One status message; the caller numbers them (``sequence``) and takes utilization from the pool."""
    return WorkerStatus(
        worker_id=identity.worker_id,
        host=identity.host,
        device=identity.device,
        gpu_index=identity.gpu_index,
        gpu_uuid=identity.gpu_uuid,
        gpu_name=identity.gpu_name,
        backend=identity.backend,
        state=state,
        slots=identity.slots,
        in_flight=pool.in_flight,
        queue_depth=pool.queue_depth,
        groups_loaded=backend.groups_loaded,
        current_group=backend.current_group,
        cpu_cached_groups=backend.cpu_cached_groups,
        models=backend.models,
        latency_avg_s=pool.latency_avg_s,
        error_count=pool.error_count,
        request_count=pool.request_count,
        group_switches=pool.group_switches,
        exclusive_request=pool.exclusive_label,
        vram_total_mb=identity.vram_total_mb,
        vram_used_mb=backend.vram_used_mb,
        utilization_percent=utilization_percent,
        speed=identity.speed,
        engine_url=identity.engine_url,
        engine=backend.engine,
        sequence=sequence,
        at=at,
    )
