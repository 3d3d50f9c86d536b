"""HTTP response bodies (OpenAPI). Bus contracts live in shared.contracts, not here."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import (
    ApplyRun,
    AssignmentDiff,
    AssignmentRequest,
    Drift,
    Gpu,
    GpuConfig,
    GpuPlanLoad,
    ServiceAssignment,
    StrategyInfo,
)


class GpuOut(Gpu):
    """One GPU as the API shows it: the detector's fields plus its host."""

    host: str


class HostOut(BaseModel):
    host: str
    source: str
    gpu_count: int
    detected_at: datetime
    sequence: int
    problems: list[str] = Field(default_factory=list)
    fleet_file: str | None = None


class GpusOut(BaseModel):
    gpus: list[GpuOut]
    source: str = Field(description="nvml, nvidia-smi, simulated, none, or mixed across hosts.")
    message: str
    hosts: list[HostOut]


class DependencyOut(BaseModel):
    ok: bool | None = Field(description="None when the dependency is not configured.")
    detail: str


class ServiceHealthOut(BaseModel):
    ok: bool
    instances: int
    last_heartbeat_at: datetime | None
    seconds_since_heartbeat: float | None


class HealthOut(BaseModel):
    status: str = Field(description="ok, or degraded when anything below is not ok.")
    nats: DependencyOut
    database: DependencyOut
    inventory: DependencyOut
    services: dict[str, ServiceHealthOut]


class ErrorOut(BaseModel):
    detail: str


class GpuConfigIn(BaseModel):
    """Body of PUT /api/system/gpu-config."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(description="manual, vram_based, latency_optimized, isolation_first or balanced.")
    assignments: list[AssignmentRequest] = Field(
        default_factory=list,
        description="Services whose GPU (or budget) you set; the rest are placed by the strategy. "
        "Empty with a strategy other than manual: the strategy places everything.",
    )


class GpuConfigOut(BaseModel):
    strategy: str
    saved: bool = Field(description="False before the first save: the assignments are the default strategy's plan.")
    saved_at: datetime | None
    revision: int
    assignments: list[ServiceAssignment]
    warnings: list[str]
    strategies: list[StrategyInfo]
    message: str | None = Field(default=None, description='e.g. "No GPUs detected".')


class GpuConfigSavedOut(BaseModel):
    success: bool
    warnings: list[str]
    config: GpuConfig
    changes: list[AssignmentDiff]


class PlanPreviewOut(BaseModel):
    strategy: str
    assignments: list[ServiceAssignment]
    warnings: list[str]
    gpus: list[GpuPlanLoad] = Field(description="Planned VRAM per GPU.")
    changes: list[AssignmentDiff] = Field(description="What would change from the saved configuration.")
    feasible: bool
    message: str | None = None


class RunAcceptedOut(BaseModel):
    """Answer to POST /apply and /rollback: the run is recorded and queued."""

    run_id: str
    state: str
    kind: str
    revision: int | None = Field(description="The configuration revision the run applies.")
    status_url: str = Field(description="Follow the run here (or on NATS: gpuplane.orchestrator.progress).")


class ConflictOut(BaseModel):
    detail: str
    run_id: str | None = Field(default=None, description="The run in progress.")


class ApplyStatusOut(BaseModel):
    """GET /status: the run in progress (else the last one), drift, and what stops an apply."""

    run: ApplyRun | None
    applied_revision: int | None = Field(description="The configuration revision the containers were last brought to.")
    drift: list[Drift] = Field(description="Containers that do not run what the override says (changed by hand?).")
    compose: str = Field(description="The compose command, project and files the orchestrator runs.")
    problems: list[str] = Field(description="What stops an apply now; empty when an apply can run.")
