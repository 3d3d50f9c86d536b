"""The frozen snapshot a strategy plans over, and the plan it yields.

VRAM is counted in MiB internally (integers: no float drift in the packing); users read and
write GB, where one GB is 1024 MiB (see ``mb`` / ``gb``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import NamedTuple

MIB_PER_GB = 1024


def mb(gb: float) -> int:
    """GB (as users write them) to MiB."""
    return round(gb * MIB_PER_GB)


def gb(mib: int | float) -> float:
    return mib / MIB_PER_GB


def fmt_gb(mib: int | float) -> str:
    """``4094`` -> ``4 GB``, ``22221`` -> ``21.7 GB``, ``666`` -> ``0.65 GB``."""
    value = gb(mib)
    text = f"{value:.2f}" if value < 1 else f"{value:.1f}"
    return text.rstrip("0").rstrip(".") + " GB"


class Role(StrEnum):
    """What a service is; the LLM is the one ``isolation_first`` keeps alone."""

    LLM = "llm"
    VISION = "vision"
    EMBEDDING = "embedding"
    OTHER = "other"


class Precision(StrEnum):
    FP16 = "fp16"
    BF16 = "bf16"


class GpuKey(NamedTuple):
    """A GPU is named by its host and its index there (a tuple: hashed and compared in C, in hot loops)."""

    host: str
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose: "GPU index" is the domain's word


@dataclass(frozen=True)
class GpuSlot:
    """One GPU as the planner sees it."""

    host: str
    index: int
    uuid: str
    name: str
    capacity_mb: int
    speed: float
    """Relative compute speed (estimated FP32 TFLOPS); only its order matters."""
    speed_basis: str = "unknown"
    nvlink_peers: frozenset[int] = frozenset()
    supports_fp16: bool = True
    supports_bf16: bool = True
    compute_capability: str | None = None
    healthy: bool = True
    health_reason: str | None = None

    @cached_property
    def key(self) -> GpuKey:
        return GpuKey(self.host, self.index)


@dataclass(frozen=True)
class ServiceSpec:
    """One GPU service of the catalog."""

    name: str
    model: str
    vram_mb: int
    """Estimate for the whole service; a service on several GPUs needs ``vram_mb / gpu_count`` on each."""
    budget_adjustable: bool = False
    min_vram_mb: int | None = None
    critical_path: bool = False
    role: Role = Role.OTHER
    gpu_count: int = 1
    precision: Precision | None = None
    short_name: str | None = None
    """How warnings name the model (``Nemotron-30B``); defaults to the service name."""

    @property
    def label(self) -> str:
        return self.short_name or self.name

    @property
    def share_mb(self) -> int:
        """VRAM needed on each of its GPUs."""
        return -(-self.vram_mb // self.gpu_count)

    @property
    def min_share_mb(self) -> int:
        floor = self.min_vram_mb if self.budget_adjustable and self.min_vram_mb is not None else self.vram_mb
        return -(-floor // self.gpu_count)


@dataclass(frozen=True)
class Pin:
    """What the user fixed for one service. ``gpus`` None: the strategy chooses."""

    service: str
    gpus: tuple[int, ...] | None = None
    host: str | None = None
    budget_mb: int | None = None
    enabled: bool = True


@dataclass(frozen=True)
class Problem:
    """Everything a strategy may look at."""

    gpus: tuple[GpuSlot, ...]
    services: tuple[ServiceSpec, ...]
    pins: tuple[Pin, ...] = ()
    headroom_mb: int = 512
    """Left free on a GPU when a budget is lowered: the CUDA context and allocator slack."""

    def pin(self, service: str) -> Pin | None:
        return next((p for p in self.pins if p.service == service), None)

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.host for g in self.gpus))

    @property
    def multi_host(self) -> bool:
        return len(self.hosts) > 1

    def slot(self, key: GpuKey) -> GpuSlot | None:
        return next((g for g in self.gpus if g.key == key), None)

    def gpu_label(self, host: str | None, index: int) -> str:
        return f"GPU {host}:{index}" if self.multi_host and host else f"GPU {index}"


@dataclass(frozen=True)
class Placement:
    """Where one service goes, as a strategy decided it."""

    service: str
    gpus: tuple[GpuKey, ...]
    pinned: bool = False
    reason: str | None = None
    """Why it could not be placed, when ``gpus`` is empty."""


@dataclass(frozen=True)
class Assignment:
    service: str
    model: str
    host: str | None
    gpus: tuple[int, ...]
    gpu_uuids: tuple[str, ...]
    vram_mb: int
    budget_mb: int | None
    override_mb: int | None
    pinned: bool
    placed_by: str
    enabled: bool = True


@dataclass(frozen=True)
class GpuLoad:
    host: str
    index: int
    name: str
    capacity_mb: int
    planned_mb: int
    services: tuple[str, ...]

    @property
    def overcommitted(self) -> bool:
        return self.planned_mb > self.capacity_mb


@dataclass(frozen=True)
class Plan:
    """A strategy's answer. Infeasible parts are reported, never raised."""

    strategy: str
    assignments: tuple[Assignment, ...]
    warnings: tuple[str, ...]
    loads: tuple[GpuLoad, ...]
    message: str | None = None
    unplaced: tuple[str, ...] = field(default=())

    @property
    def feasible(self) -> bool:
        return not self.unplaced and not any(load.overcommitted for load in self.loads)
