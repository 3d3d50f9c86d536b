"""The grid the router benchmark runs: fleets x loads x routers x seeds, pooled per cell."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from bench.router.fleet import FLEETS, ideal_capacity
from bench.router.sim import RunResult, Simulation, Variant, make_requests

BASELINE = "round_robin"
OURS = "affinity"
ORACLE = "oracle"
POLICY_ORDER = ("round_robin", "random", "least_connections", "p2c", "affinity", "oracle")
LARGE_QUEUE_LIMIT = 1000
KEEPING_UP = 0.98
"""A run keeps up when it completes at least this fraction of what arrives over the window."""


@dataclass(frozen=True)
class Setup:
    """One set of router settings every policy of a table runs with."""

    key: str
    title: str
    worker_queue_limit: int
    variants: tuple[Variant, ...]


def _variants(limit: int) -> tuple[Variant, ...]:
    plain = tuple(Variant(p, worker_queue_limit=limit) for p in POLICY_ORDER)
    stale = Variant(OURS, label="affinity, statuses ≤ 50 ms old", worker_queue_limit=limit, status_interval_s=0.05)
    return (*plain, stale)


SETUPS = (
    Setup("shallow", "worker_queue_limit 8 (most waiting happens in the router)", 8, _variants(8)),
    Setup("deep", f"the router's default, worker_queue_limit {LARGE_QUEUE_LIMIT} (workers queue almost everything)",
          LARGE_QUEUE_LIMIT, _variants(LARGE_QUEUE_LIMIT)),
)


@dataclass(frozen=True)
class Config:
    fleets: tuple[str, ...]
    loads: tuple[float, ...]
    requests: int
    """Measured requests per run."""
    warmup: int
    """Requests before them (arriving at a rate ramped up from 10% to the target), not measured."""
    seeds: int
    setups: tuple[Setup, ...] = SETUPS
    overhead_calls: int = 20000
    end_to_end_samples: int = 2000
    burst_seeds: int = 3


FULL = Config(fleets=("pair", "equal"), loads=(0.5, 0.8, 0.95), requests=20000, warmup=4000, seeds=4)
QUICK = Config(fleets=("pair", "equal"), loads=(0.5, 0.8, 0.95), requests=1200, warmup=300, seeds=1,
               overhead_calls=2000, end_to_end_samples=200)


@dataclass
class Cell:
    """One router on one fleet at one load, every seed pooled."""

    setup: str
    fleet: str
    load: float
    variant: Variant
    capacity: float
    runs: list[RunResult] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return sorted(x for r in self.runs for x in r.latencies)

    def percentile(self, q: float) -> float:
        values = self.latencies
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]

    @property
    def throughput(self) -> float:
        """Completed per second over the measurement windows."""
        return sum(r.completed_in_window for r in self.runs) / sum(r.window_s for r in self.runs)

    @property
    def offered(self) -> float:
        """Arrivals per second over the same windows (the rate drawn, give or take the noise)."""
        return sum(r.arrived_in_window - 1 for r in self.runs) / sum(r.window_s for r in self.runs)

    @property
    def switches_per_1000(self) -> float:
        return 1000 * sum(r.switches_in_window for r in self.runs) / sum(r.arrived_in_window for r in self.runs)

    @property
    def runs_keeping_up(self) -> int:
        """Runs whose throughput stayed within ``KEEPING_UP`` of the offered rate (the others' queues grew)."""
        return sum(1 for r in self.runs if r.completed_in_window >= KEEPING_UP * (r.arrived_in_window - 1))

    def router_wait_percentile(self, q: float) -> float:
        values = sorted(x for r in self.runs for x in r.router_wait)
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


@dataclass(frozen=True)
class Job:
    setup: str
    fleet: str
    load: float
    variant: Variant
    seed: int
    requests: int
    warmup: int


def run_job(job: Job) -> RunResult:
    fleet = FLEETS[job.fleet]
    rate = job.load * ideal_capacity(fleet)
    requests = make_requests(job.warmup + job.requests, rate, job.seed, ramp=job.warmup)
    return Simulation(fleet, job.variant, requests, seed=job.seed, warmup=job.warmup, load=job.load, rate=rate).run()


def jobs(config: Config, seed: int) -> list[Job]:
    return [
        Job(setup.key, fleet, load, variant, seed + s, config.requests, config.warmup)
        for setup in config.setups
        for fleet in config.fleets
        for load in config.loads
        for variant in setup.variants
        for s in range(config.seeds)
    ]


def run(config: Config, seed: int, progress: Callable[[str], None] = lambda _: None,
        processes: int | None = None) -> list[Cell]:
    """Every job of the grid (in parallel processes), pooled into cells in the grid's order."""
    todo = jobs(config, seed)
    cells: dict[tuple[str, str, float, str], Cell] = {}
    for job in todo:
        key = (job.setup, job.fleet, job.load, job.variant.name)
        if key not in cells:
            cells[key] = Cell(job.setup, job.fleet, job.load, job.variant, ideal_capacity(FLEETS[job.fleet]))
    workers = processes or max(1, os.cpu_count() or 1)
    # The oracle's runs are the slow ones: start them first so they do not trail at the end.
    ordered = sorted(todo, key=lambda j: j.variant.policy != ORACLE)
    if workers == 1:
        results: Sequence[RunResult] = [_progress(run_job(job), job, progress) for job in ordered]
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = [(job, pool.submit(run_job, job)) for job in ordered]
            results = [_progress(f.result(), job, progress) for job, f in futures]
    for job, result in zip(ordered, results, strict=True):
        cells[(job.setup, job.fleet, job.load, job.variant.name)].runs.append(result)
    return list(cells.values())


def _progress(result: RunResult, job: Job, progress: Callable[[str], None]) -> RunResult:
    progress(f"{job.setup} {job.fleet} {job.load:.0%} {job.variant.name} seed {job.seed}")
    return result
