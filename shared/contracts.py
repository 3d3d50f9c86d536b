"""Every message that crosses the bus.

Each message is a frozen pydantic v2 model that forbids unknown fields and carries a
versioned ``type`` literal (``gpuplane.<thing>.v<N>``). A breaking change adds a new
model with a new version; the old one stays until nobody sends it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def utc_now() -> datetime:
    return datetime.now(UTC)


class Frozen(BaseModel):
    """Base for every value object that travels: immutable and strict about its fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Message(Frozen):
    """Base for top-level bus messages; subclasses pin ``type`` to a literal."""

    type: str


M = TypeVar("M", bound=Message)


# --------------------------------------------------------------------------- GPUs


class InventorySource(StrEnum):
    """Where an inventory came from. ``simulated`` must never be mistaken for real hardware."""

    NVML = "nvml"
    NVIDIA_SMI = "nvidia-smi"
    SIMULATED = "simulated"
    NONE = "none"


class Gpu(Frozen):
    """One GPU as the detector saw it. Index is nvidia-smi's (PCI bus) order.

    ``*_mb`` fields are MiB (2**20 bytes), the unit nvidia-smi prints as "MiB".
    """

    index: int = Field(ge=0)
    uuid: str
    name: str
    pci_bus_id: str
    vram_total_mb: int = Field(ge=0)
    vram_used_mb: int = Field(ge=0)
    vram_free_mb: int = Field(ge=0)
    utilization_percent: float | None = Field(default=None, ge=0, le=100)
    compute_capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$")
    supports_fp16: bool = False
    supports_bf16: bool = False
    temperature_c: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    sm_count: int | None = None
    max_sm_clock_mhz: int | None = None
    nvlink_peers: tuple[int, ...] = ()
    healthy: bool = True
    health_reason: str | None = None


class InventoryChangeKind(StrEnum):
    APPEARED = "appeared"
    DISAPPEARED = "disappeared"
    UNHEALTHY = "unhealthy"
    RECOVERED = "recovered"


class InventoryChange(Frozen):
    kind: InventoryChangeKind
    uuid: str
    index: int
    name: str
    reason: str | None = None


class Inventory(Message):
    """The full GPU inventory of one host, published periodically and at once on a change."""

    type: Literal["gpuplane.inventory.v1"] = "gpuplane.inventory.v1"
    host: str
    source: InventorySource
    gpus: tuple[Gpu, ...] = ()
    detected_at: datetime = Field(default_factory=utc_now)
    sequence: int = Field(default=0, ge=0)
    changes: tuple[InventoryChange, ...] = ()
    problems: tuple[str, ...] = ()
    """Why a backend was skipped or failed, in words a user can act on."""
    fleet_file: str | None = None

    @property
    def status_message(self) -> str:
        if not self.gpus:
            detail = "; ".join(self.problems)
            return f"No GPUs detected ({detail})" if detail else "No GPUs detected"
        count = len(self.gpus)
        unhealthy = sum(1 for gpu in self.gpus if not gpu.healthy)
        sick = f", {unhealthy} unhealthy" if unhealthy else ""
        return f"{count} GPU{'' if count == 1 else 's'} ({self.source.value}){sick}"


class GpuHealthChanged(Message):
    """A GPU appeared, disappeared, turned unhealthy or recovered."""

    type: Literal["gpuplane.gpu_health.v1"] = "gpuplane.gpu_health.v1"
    host: str
    source: InventorySource
    change: InventoryChange
    at: datetime = Field(default_factory=utc_now)


class RescanRequest(Message):
    type: Literal["gpuplane.detector.rescan.v1"] = "gpuplane.detector.rescan.v1"
    reason: str = "requested"


# --------------------------------------------------------------------------- services


class ServiceName(StrEnum):
    DETECTOR = "detector"
    PLANNER = "planner"
    ORCHESTRATOR = "orchestrator"
    ROUTER = "router"
    API = "api"


class Heartbeat(Message):
    """Liveness of one service instance, published every few seconds."""

    type: Literal["gpuplane.heartbeat.v1"] = "gpuplane.heartbeat.v1"
    service: ServiceName
    instance: str
    host: str
    pid: int
    started_at: datetime
    at: datetime = Field(default_factory=utc_now)
    version: str


class HealthRequest(Message):
    type: Literal["gpuplane.health.request.v1"] = "gpuplane.health.request.v1"


class HealthReply(Message):
    type: Literal["gpuplane.health.reply.v1"] = "gpuplane.health.reply.v1"
    service: ServiceName
    instance: str
    host: str
    ok: bool
    started_at: datetime
    version: str
    details: dict[str, str] = Field(default_factory=dict)


class ErrorReply(Message):
    """What a responder sends back instead of its normal reply when the request cannot be served."""

    type: Literal["gpuplane.error.v1"] = "gpuplane.error.v1"
    code: Literal["bad_request", "unavailable", "internal"]
    message: str


AnyMessage = Annotated[
    Inventory | GpuHealthChanged | RescanRequest | Heartbeat | HealthRequest | HealthReply | ErrorReply,
    Field(discriminator="type"),
]
_ANY = TypeAdapter(AnyMessage)


def parse_any(data: bytes | str) -> Message:
    """Decode any known message by its ``type``; raises ``pydantic.ValidationError`` otherwise."""
    return _ANY.validate_json(data)


def message_types() -> dict[str, type[Message]]:
    """Map of every ``type`` literal to its model (for docs and tests)."""
    result: dict[str, type[Message]] = {}
    for model in (Inventory, GpuHealthChanged, RescanRequest, Heartbeat, HealthRequest, HealthReply, ErrorReply):
        result[model.model_fields["type"].default] = model
    return result
