"""Seeded planning problems: fleets of real GPU sizes and service mixes shaped like real catalogs.

The only randomness of the benchmark lives here, each instance from its own
``random.Random`` seeded by ``(seed, gpus, services, index)``, so any one instance can be rebuilt
from the figures the report prints (see :func:`instance`).

Sizes: a mix is drawn from :data:`MODELS` (one LLM, the rest vision, embedding and other
services, a few critical-path ones, some with an adjustable budget and a minimum) with +-10%
jitter, then scaled as a whole so that total demand is a drawn 60-95% of the fleet's VRAM (a
few small models on a big fleet become big ones, many on a small fleet become small ones),
each kept between 0.3 GB and 90% of the largest GPU. A mix that first-fit-decreasing cannot
place without overflow is drawn again (and the fleet too, after 50 tries), so every instance is
feasible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.planner.core.ledger import Ledger, tenant_for
from services.planner.core.model import GpuSlot, Problem, Role, ServiceSpec, mb
from services.planner.core.speed import KNOWN_MODELS_TFLOPS

GPU_TYPES: tuple[tuple[str, str, int], ...] = (
    # (NVML name, speed-table key, VRAM in MiB as NVML reports it)
    ("NVIDIA RTX A400", "RTX A400", 4094),
    ("NVIDIA GeForce RTX 3070", "RTX 3070", 8192),
    ("NVIDIA GeForce RTX 3060", "RTX 3060", 12288),
    ("NVIDIA RTX A4000", "RTX A4000", 16376),
    ("NVIDIA RTX A5500", "RTX A5500", 24564),
    ("NVIDIA GeForce RTX 3090", "RTX 3090", 24576),
    ("NVIDIA RTX A6000", "RTX A6000", 49140),
    ("NVIDIA H100 80GB HBM3", "H100", 81559),
)
"""4 to 80 GB cards; a mixed fleet draws from all of them, an equal one repeats one."""

GPUS_PER_HOST = 8


@dataclass(frozen=True)
class Model:
    name: str
    vram_gb: float
    role: Role
    critical_path: bool = False
    min_vram_gb: float | None = None
    """Set for services with an adjustable budget."""


LLMS: tuple[Model, ...] = (
    Model("Nemotron-3-Nano-30B (Q4_K_M)", 21.7, Role.LLM, critical_path=True),
    Model("Llama-3.1-8B (fp16)", 16.0, Role.LLM, critical_path=True),
    Model("Mistral-Nemo-12B (Q4_K_M)", 8.2, Role.LLM, critical_path=True),
    Model("Qwen2.5-7B (Q4_K_M)", 5.5, Role.LLM),
)
MODELS: tuple[Model, ...] = (
    Model("YOLO26", 0.65, Role.VISION, critical_path=True),
    Model("Florence-2-Large", 1.5, Role.VISION),
    Model("SAM2-Large", 2.4, Role.VISION),
    Model("Grounding-DINO", 1.9, Role.VISION),
    Model("Depth-Anything-V2-L", 1.3, Role.VISION),
    Model("RT-DETR", 0.9, Role.VISION, critical_path=True),
    Model("CLIP ViT-L", 1.2, Role.EMBEDDING),
    Model("bge-m3", 2.2, Role.EMBEDDING),
    Model("nomic-embed-text", 0.6, Role.EMBEDDING),
    Model("e5-small", 0.35, Role.EMBEDDING),
    Model("Whisper-large-v3", 3.9, Role.OTHER, critical_path=True),
    Model("Whisper-small", 1.0, Role.OTHER),
    Model("Kokoro TTS", 0.8, Role.OTHER),
    Model("bge-reranker", 1.1, Role.OTHER),
    Model("PaddleOCR", 0.5, Role.OTHER),
    Model("SDXL", 8.5, Role.OTHER),
    Model("FLUX.1-schnell (fp8)", 13.0, Role.OTHER),
    Model("Model Zoo (9 models)", 6.8, Role.OTHER, min_vram_gb=2.0),
    Model("ComfyUI", 10.0, Role.OTHER, min_vram_gb=4.0),
    Model("Ollama pool", 24.0, Role.OTHER, min_vram_gb=8.0),
)
"""Non-LLM footprints; an instance has exactly one LLM, drawn from :data:`LLMS`."""

MIN_SERVICE_MB = mb(0.3)
LOAD_RANGE = (0.60, 0.95)
MAX_DRAWS = 200
FLEET_REDRAW = 50


@dataclass(frozen=True)
class Instance:
    """One benchmark problem and how to rebuild it."""

    seed: int
    gpus: int
    services: int
    index: int
    equal_fleet: bool
    target_load: float
    problem: Problem

    @property
    def label(self) -> str:
        kind = "equal" if self.equal_fleet else "mixed"
        return f"{self.gpus}x{self.services}#{self.index} ({kind}, seed {self.seed})"

    @property
    def load(self) -> float:
        """Total demand over total capacity."""
        demand = sum(s.vram_mb for s in self.problem.services)
        return demand / sum(g.capacity_mb for g in self.problem.gpus)


def instance(seed: int, gpus: int, services: int, index: int) -> Instance:
    """Instance ``index`` of the ``gpus`` x ``services`` cell; every third one has an equal-size fleet."""
    rng = random.Random(f"planner:{seed}:{gpus}:{services}:{index}")
    equal = index % 3 == 2
    slots = fleet(rng, gpus, equal)
    for attempt in range(1, MAX_DRAWS + 1):
        if attempt % FLEET_REDRAW == 0:
            slots = fleet(rng, gpus, equal)  # this fleet is too small for so many services
        target = rng.uniform(*LOAD_RANGE)
        specs = mix(rng, slots, services, target)
        problem = Problem(gpus=slots, services=specs)
        if _ffd_fits(problem):
            return Instance(seed, gpus, services, index, equal, target, problem)
    raise RuntimeError(f"no feasible mix for {gpus} GPUs x {services} services (seed {seed}, index {index})")


def fleet(rng: random.Random, count: int, equal: bool) -> tuple[GpuSlot, ...]:
    """``count`` GPUs, eight per host; one type repeated when ``equal``, else a mix of all types."""
    if equal:
        types = [rng.choice(GPU_TYPES[3:])] * count
    else:
        types = [rng.choice(GPU_TYPES) for _ in range(count)]
        # A mixed fleet with one type only would be an equal one by accident.
        if count > 1 and len({t[2] for t in types}) == 1:
            types[-1] = next(t for t in GPU_TYPES if t[2] != types[0][2])
    slots = []
    for i, (name, model, capacity) in enumerate(types):
        host, index = f"host{i // GPUS_PER_HOST}", i % GPUS_PER_HOST
        slots.append(
            GpuSlot(
                host=host,
                index=index,
                uuid=f"GPU-bench-{i:04d}",
                name=name,
                capacity_mb=capacity,
                speed=KNOWN_MODELS_TFLOPS[model],
                speed_basis="known model table",
            )
        )
    return tuple(slots)


def mix(rng: random.Random, gpus: tuple[GpuSlot, ...], count: int, target_load: float) -> tuple[ServiceSpec, ...]:
    """``count`` services, one of them an LLM, scaled to ``target_load`` of the fleet's VRAM."""
    drawn = [rng.choice(LLMS)] + [rng.choice(MODELS) for _ in range(count - 1)]
    rng.shuffle(drawn)
    sizes = [mb(m.vram_gb) * rng.uniform(0.9, 1.1) for m in drawn]
    ceiling = 0.9 * max(g.capacity_mb for g in gpus)
    target = target_load * sum(g.capacity_mb for g in gpus)
    scale = _scale(sizes, target, MIN_SERVICE_MB, ceiling)
    specs = []
    for i, (m, size) in enumerate(zip(drawn, sizes, strict=True)):
        vram = round(min(max(size * scale, MIN_SERVICE_MB), ceiling))
        floor = None
        if m.min_vram_gb is not None:
            floor = max(MIN_SERVICE_MB, min(vram, round(vram * m.min_vram_gb / m.vram_gb)))
        specs.append(
            ServiceSpec(
                name=f"svc-{i:03d}",
                model=m.name,
                vram_mb=vram,
                budget_adjustable=floor is not None,
                min_vram_mb=floor,
                critical_path=m.critical_path,
                role=m.role,
            )
        )
    return tuple(specs)


def _scale(sizes: list[float], target: float, low: float, high: float) -> float:
    """The factor that brings ``sum(clamp(s * f))`` to ``target`` (bisection: the sum grows with f)."""
    lo, hi = 1e-6, 1e6
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        total = sum(min(max(s * mid, low), high) for s in sizes)
        lo, hi = (mid, hi) if total < target else (lo, mid)
    return lo


def _ffd_fits(problem: Problem) -> bool:
    """First-fit decreasing onto the largest GPUs first: does every service fit without overflow?"""
    ledger = Ledger(problem.gpus, problem.headroom_mb)
    order = sorted(problem.gpus, key=lambda g: -g.capacity_mb)
    for spec in sorted(problem.services, key=lambda s: -s.vram_mb):
        tenant = tenant_for(spec)
        home = next((g for g in order if ledger.fits(g.key, tenant)), None)
        if home is None:
            return False
        ledger.add((home.key,), tenant)
    return True
