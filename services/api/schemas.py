"""HTTP response bodies (OpenAPI). Bus contracts live in shared.contracts, not here."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from shared.contracts import Gpu


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
