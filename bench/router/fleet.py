"""What the router benchmark simulates: the catalog, the request mix, the fleets, and their ideal capacity."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.worker.core.device import MB_PER_GB, default_slots
from services.worker.core.simgpu import SimGpu
from shared.contracts import InferenceKind
from shared.modelgroups import GroupEntry, ModelCatalog, ModelEntry


def _group(group_id: str, vram_gb: float, load_s: float, latency_s: float,
           kind: InferenceKind = InferenceKind.CHAT) -> GroupEntry:
    return GroupEntry(id=group_id, vram_gb=vram_gb, load_time_s=load_s,
                      models=(ModelEntry(id=group_id, kind=kind, latency_s=latency_s),))


CATALOG = ModelCatalog(
    groups=(
        _group("chat-large", 11.0, 6.0, 0.60),
        _group("chat-mid", 6.0, 4.0, 0.40),
        _group("chat-small", 5.0, 3.0, 0.25),
        _group("embed", 1.0, 1.0, 0.05, InferenceKind.EMBEDDING),
        _group("mini", 3.0, 2.0, 0.15),
    ),
    cpu_reload_fraction=0.2,
)
"""Three chat groups that fit one 24 GB card together (22 GB), a 1 GB embedding group and a 3 GB
small chat group: 26 GB in all, so no 24 GB card holds everything, and the 4 GB card holds only
``embed`` and ``mini`` (exactly its 4096 MiB)."""

POPULARITY: Mapping[str, float] = {
    "chat-large": 0.35,
    "embed": 0.25,
    "chat-mid": 0.18,
    "mini": 0.12,
    "chat-small": 0.10,
}
"""Share of requests per group (Zipf-like)."""

BODIES: Mapping[InferenceKind, dict[str, Any]] = {
    InferenceKind.CHAT: {"messages": [{"role": "user", "content": "hi"}]},
    InferenceKind.EMBEDDING: {"input": "hi"},
}
"""One typical request of each kind: ``SimGpu`` sizes both at exactly the catalog's ``latency_s``."""

JITTER = 0.5
"""Lognormal sigma of service times (mean 1, so the catalog's figures stay the averages)."""
MAX_CPU_CACHED = 2
"""The worker's default CPU cache of evicted groups (``BackendConfig.max_cpu_cached``)."""


@dataclass(frozen=True)
class GpuSpec:
    vram_gb: float
    speed: float
    slots: int | None = None
    """None: the worker's default for this VRAM (under 12 GB 1, under 20 GB 2, else 3)."""

    @property
    def vram_mb(self) -> int:
        return math.ceil(self.vram_gb * MB_PER_GB)

    @property
    def worker_slots(self) -> int:
        return self.slots if self.slots is not None else default_slots(self.vram_mb)

    def describe(self) -> str:
        return f"{self.vram_gb:g} GB, speed {self.speed:g}, {self.worker_slots} slot{'s' * (self.worker_slots > 1)}"


@dataclass(frozen=True)
class Fleet:
    name: str
    title: str
    gpus: tuple[GpuSpec, ...]

    def describe(self) -> str:
        return "; ".join(f"cuda:{i} {g.describe()}" for i, g in enumerate(self.gpus))


PAIR = Fleet("pair", "Mixed fleet: the reference 24 GB + 4 GB pair", (GpuSpec(24, 1.0), GpuSpec(4, 0.35)))
EQUAL = Fleet("equal", "Four equal 24 GB GPUs", tuple(GpuSpec(24, 1.0) for _ in range(4)))
FLEETS: Mapping[str, Fleet] = {f.name: f for f in (PAIR, EQUAL)}


def make_gpu(spec: GpuSpec, catalog: ModelCatalog = CATALOG) -> SimGpu:
    return SimGpu(vram_mb=spec.vram_mb, speed=spec.speed, catalog=catalog, max_cpu_cached=MAX_CPU_CACHED)


def mean_service_s(gpu: SimGpu, group: GroupEntry) -> float:
    """Average service time of one request of ``group`` on ``gpu`` (its models equally likely; jitter has mean 1)."""
    return sum(gpu.service_s(m.id, m.kind, BODIES[m.kind]) for m in group.models) / len(group.models)


def ideal_capacity(fleet: Fleet, catalog: ModelCatalog = CATALOG,
                   popularity: Mapping[str, float] = POPULARITY) -> float:
    """Requests per second the fleet serves with every slot busy, no group switch ever, and each
    group's requests split over the GPUs that can hold it in the best proportions.

    That is the largest ``rate`` for which some split ``x[g][w]`` (requests/s of group ``g`` on GPU
    ``w``, ``sum_w x[g][w] = rate * share[g]``, only where ``w`` can hold ``g``) keeps every GPU's
    busy-slot demand ``sum_g x[g][w] * service[g][w]`` within its slots. Service times here are
    ``work[g] / speed[w]`` (what ``SimGpu`` computes), so this is a transportation problem whose
    optimum is, by the max-flow min-cut theorem, the smallest over sets ``S`` of groups of
    (slots x speed of the GPUs that can hold some group of ``S``) / (work per request of ``S``).
    """
    gpus = [make_gpu(spec, catalog) for spec in fleet.gpus]
    groups = [g for g in catalog.groups if popularity.get(g.id, 0.0) > 0]
    total_share = sum(popularity[g.id] for g in groups)
    work: dict[str, float] = {}
    for group in groups:
        holders = [(spec, gpu) for spec, gpu in zip(fleet.gpus, gpus, strict=True) if gpu.can_hold(group.id)]
        if not holders:
            raise ValueError(f"no GPU of {fleet.name} can hold {group.id}")
        per_speed = {round(mean_service_s(gpu, group) * spec.speed, 12) for spec, gpu in holders}
        if len(per_speed) != 1:
            raise ValueError(f"service times of {group.id} do not scale with speed alone: {per_speed}")
        work[group.id] = popularity[group.id] / total_share * per_speed.pop()
    best = math.inf
    for size in range(1, len(groups) + 1):
        for subset in itertools.combinations(groups, size):
            supply = sum(spec.worker_slots * spec.speed for spec, gpu in zip(fleet.gpus, gpus, strict=True)
                         if any(gpu.can_hold(g.id) for g in subset))
            demand = sum(work[g.id] for g in subset)
            best = min(best, supply / demand)
    return best
