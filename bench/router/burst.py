"""A burst: 500 chat requests at once on the reference pair with the shipped catalog, and its lower bound.

The fleet is ``deploy/fleets/reference.yaml`` as the simulated backend runs it: cuda:0 an RTX A5500
(24 GB, 1 GB of it taken by a desktop, speed 1.0, 3 slots), cuda:1 an RTX A400 (4 GB, speed 6 x 1762 ÷
(80 x 1665) = 0.079, 1 slot); both start with nothing loaded and nothing measured. The catalog is
``config/model_groups.yml``; each request asks for one of its chat models, equally often.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from bench.router.fleet import BODIES, JITTER, Fleet, GpuSpec, make_gpu
from bench.router.sim import Simulation, Variant
from bench.router.worker import Request
from services.router.core.model import PlacementRequest
from services.worker.core.device import MB_PER_GB, default_speed
from shared.contracts import InferenceKind
from shared.modelgroups import ModelCatalog, load_model_catalog

CATALOG_FILE = Path(__file__).resolve().parents[2] / "config" / "model_groups.yml"
REFERENCE = Fleet(
    "reference",
    "The reference pair (deploy/fleets/reference.yaml) with config/model_groups.yml",
    (GpuSpec((24564 - 1024) / MB_PER_GB, 1.0, slots=3), GpuSpec(4094 / MB_PER_GB, default_speed(6, 1762), slots=1)),
)
REQUESTS = 500


def burst_requests(catalog: ModelCatalog, count: int = REQUESTS, seed: int = 0) -> list[Request]:
    """``count`` chat requests at t = 0, each for one of the catalog's chat models drawn uniformly."""
    rng = random.Random(f"bench.router burst {seed}")
    chat = [(g, m) for g in catalog.groups for m in g.models if m.kind is InferenceKind.CHAT]
    requests = []
    for index in range(count):
        group, model = rng.choice(chat)
        placement = PlacementRequest(
            request_id=str(index), kind=model.kind, model=model.id, group=group.id, group_load_s=group.load_time_s,
            cpu_reload_fraction=catalog.cpu_reload_fraction, expected_latency_s=model.latency_s,
            group_vram_mb=math.ceil(group.vram_gb * MB_PER_GB),
        )
        requests.append(Request(index, 0.0, group.id, model.id, model.kind, BODIES[model.kind], rng.getrandbits(63),
                                placement))
    return requests


@dataclass(frozen=True)
class BurstResult:
    policy: str
    seed: int
    makespan_s: float
    bound_s: float
    served: tuple[int, ...]
    """Requests per GPU."""

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.bound_s


def _loads_s(loads: list[float], longest_s: float) -> float:
    """Time a GPU cannot serve for its loads: a load stops new requests from starting, but those already
    serving go on (at most ``longest_s`` more). Nothing runs before the first load, whichever that is."""
    if not loads:
        return 0.0
    first = min(loads)
    rest = list(loads)
    rest.remove(first)
    return first + sum(max(0.0, load - longest_s) for load in rest)


def lower_bound_s(fleet: Fleet, catalog: ModelCatalog, requests: list[Request]) -> float:
    """No schedule finishes sooner: a work-conserving bound over the requests' exact service times.

    A GPU's last answer comes no sooner than its share of the work spread perfectly over its slots,
    plus the time its group loads keep it from starting anything (the first load whole, since nothing
    runs before it; each later one less the longest request, which may still be finishing). Only the
    groups both GPUs can hold can be split; their work is split fractionally (a relaxation, so the bound
    stays below any real split), and the best split is where the two GPUs would finish together, or all
    on one side.
    """
    gpus = [make_gpu(spec, catalog) for spec in fleet.gpus]
    if len(gpus) != 2:
        raise ValueError("the bound is written for a pair")
    fixed = [0.0, 0.0]
    shared = 0.0
    """Work of requests both can serve, in cuda:0 seconds."""
    groups: list[set[str]] = [set(), set()]
    shared_groups: set[str] = set()
    longest = [0.0, 0.0]
    for r in requests:
        times = [gpu.service_s(r.model, r.kind, r.body, 1, random.Random(r.seed), JITTER) if gpu.can_hold(r.group)
                 else math.inf for gpu in gpus]
        for i, t in enumerate(times):
            if not math.isinf(t):
                longest[i] = max(longest[i], t)
        if math.isinf(times[1]):
            fixed[0] += times[0]
            groups[0].add(r.group)
        elif math.isinf(times[0]):
            fixed[1] += times[1]
            groups[1].add(r.group)
        else:
            shared += times[0]
            shared_groups.add(r.group)
    ratio = fleet.gpus[0].speed / fleet.gpus[1].speed
    slots = [spec.worker_slots for spec in fleet.gpus]

    def blocked(i: int, with_shared: bool) -> float:
        names = groups[i] | (shared_groups if with_shared else set())
        return _loads_s([catalog.group(g).load_time_s for g in names], longest[i])  # type: ignore[union-attr]

    def finish(moved: float) -> float:
        """Makespan with ``moved`` of the shared work (cuda:0 seconds) on cuda:1."""
        kept = shared - moved
        end0 = blocked(0, kept > 0) + (fixed[0] + kept) / slots[0]
        end1 = blocked(1, moved > 0) + (fixed[1] + moved * ratio) / slots[1]
        return max(end0, end1)

    # Both ends are linear in ``moved`` between its extremes: the best is at an end or where they cross.
    base0 = blocked(0, True) + (fixed[0] + shared) / slots[0]
    base1 = blocked(1, True) + fixed[1] / slots[1]
    crossing = (base0 - base1) / (ratio / slots[1] + 1 / slots[0])
    candidates = [0.0, shared, min(shared, max(0.0, crossing))]
    return min(finish(m) for m in candidates)


def run_burst(policy: str, seed: int = 0, give_way_factor: float | None = None) -> BurstResult:
    catalog = load_model_catalog(CATALOG_FILE)
    requests = burst_requests(catalog, seed=seed)
    variant = Variant(policy) if give_way_factor is None else Variant(policy, give_way_factor=give_way_factor)
    sim = Simulation(REFERENCE, variant, requests, seed=seed, warmup=0, catalog=catalog)
    sim.run()
    served = tuple(sum(1 for w in sim.where if w == i) for i in range(len(REFERENCE.gpus)))
    return BurstResult(policy, seed, max(sim.done_at), lower_bound_s(REFERENCE, catalog, requests), served)
