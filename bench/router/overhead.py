"""What the router itself costs per request, in real time.

1. ``decision_times``: the pure core's work per request, ``Pools.place`` + ``on_sent`` +
   ``on_done`` over four workers, and ``on_status`` per status, timed call by call.
2. ``end_to_end``: a client's round trip over a real nats-server, straight to a worker-like
   responder that answers at once, against the same through the real router service
   (``services/router/service.py``'s ``Router``); the difference of the medians is what routing adds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.router.fleet import BODIES, CATALOG, EQUAL, Fleet, make_gpu
from services.router.core.model import PlacementRequest
from services.router.core.policies import make_policy
from services.router.core.pools import Pools
from shared.contracts import (
    InferenceKind,
    InferenceRequest,
    InferenceResult,
    WorkerResult,
    WorkerState,
    WorkerStatus,
    WorkerTask,
)

CORE_POLICIES = ("affinity", "p2c", "least_connections", "round_robin", "random")


@dataclass(frozen=True)
class Timing:
    """Per-call times in microseconds."""

    p50_us: float
    p99_us: float
    calls: int


@dataclass(frozen=True)
class CoreTimes:
    per_request: dict[str, Timing]
    """Policy name -> ``place`` + ``on_sent`` + ``on_done``."""
    on_status: Timing
    workers: int


@dataclass(frozen=True)
class EndToEnd:
    direct_p50_ms: float
    routed_p50_ms: float
    direct_p99_ms: float
    routed_p99_ms: float
    samples: int

    @property
    def added_p50_ms(self) -> float:
        return self.routed_p50_ms - self.direct_p50_ms


def _timing(samples_ns: Sequence[int]) -> Timing:
    ordered = sorted(samples_ns)
    return Timing(ordered[len(ordered) // 2] / 1000, ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1000,
                  len(ordered))


def fleet_statuses(fleet: Fleet = EQUAL, seed: int = 0) -> list[WorkerStatus]:
    """Statuses of a busy fleet: two or three groups loaded each, a few requests running and queued."""
    rng = random.Random(seed)
    statuses = []
    groups = [g.id for g in CATALOG.groups]
    for index, spec in enumerate(fleet.gpus):
        gpu = make_gpu(spec)
        holdable = [g for g in groups if gpu.can_hold(g)]
        loaded = tuple(rng.sample(holdable, min(len(holdable), rng.randint(2, 3))))
        statuses.append(WorkerStatus(
            worker_id=f"bench-cuda{index}", host="bench", device=f"cuda:{index}", gpu_index=index,
            backend="simulated", state=WorkerState.READY, slots=spec.worker_slots,
            in_flight=rng.randint(1, spec.worker_slots), queue_depth=rng.randint(0, 4),
            groups_loaded=loaded, current_group=loaded[-1], models=gpu.holdable_models(),
            latency_avg_s=rng.uniform(0.2, 0.6), request_count=1000, sequence=1,
        ))
    return statuses


def _placement(group_id: str) -> PlacementRequest:
    group = CATALOG.group(group_id)
    assert group is not None
    model = group.models[0]
    return PlacementRequest(request_id=uuid.uuid4().hex, kind=model.kind, model=model.id, group=group.id,
                            group_load_s=group.load_time_s, cpu_reload_fraction=CATALOG.cpu_reload_fraction,
                            expected_latency_s=model.latency_s)


def decision_times(calls: int = 20000, policies: Sequence[str] = CORE_POLICIES) -> CoreTimes:
    """Time the core per request (garbage collector off, as ``timeit`` does), on four busy workers."""
    statuses = fleet_statuses()
    placements = [_placement(g.id) for g in CATALOG.groups]
    per_request: dict[str, Timing] = {}
    clock = time.perf_counter_ns
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for name in policies:
            pools = Pools()
            for status in statuses:
                pools.on_status(status, 0.0)
            policy = make_policy(name)
            rng = random.Random(0)
            samples = []
            for i in range(calls):
                request = placements[i % len(placements)]
                now = 1.0 + i * 1e-6
                started = clock()
                decision = pools.place(request, now, policy, rng)
                worker_id = getattr(decision, "worker_id", None)
                if worker_id is not None:
                    pools.on_sent(worker_id, now)
                    pools.on_done(worker_id, now, ok=True)
                samples.append(clock() - started)
                if worker_id is None:
                    raise RuntimeError(f"{name} placed nothing on the benchmark's fleet: {decision}")
            per_request[name] = _timing(samples)
        pools = Pools()
        status_samples = []
        for i in range(calls):
            status = statuses[i % len(statuses)]
            started = clock()
            pools.on_status(status, 1.0)
            status_samples.append(clock() - started)
    finally:
        if gc_was:
            gc.enable()
    return CoreTimes(per_request, _timing(status_samples), len(statuses))


# ---------------------------------------------------------------------- end to end


def end_to_end(samples: int = 2000, warmup: int = 200) -> EndToEnd:
    """Round trips over a real nats-server: client -> worker, and client -> router -> worker."""
    from services.stack import embedded

    with tempfile.TemporaryDirectory(prefix="bench-router-") as root:
        port = embedded.free_port()
        _, argv = embedded.prepare_nats(Path(root), port)
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            embedded.wait_for_port(port)
            times = asyncio.run(_round_trips(f"nats://127.0.0.1:{port}", samples, warmup))
        finally:
            server.terminate()
            server.wait(10)

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return EndToEnd(
        direct_p50_ms=1000 * statistics.median(times["direct"]),
        routed_p50_ms=1000 * statistics.median(times["routed"]),
        direct_p99_ms=pct(times["direct"], 0.99),
        routed_p99_ms=pct(times["routed"], 0.99),
        samples=samples,
    )


async def _round_trips(url: str, samples: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call, alternating direct and routed calls so that drift hits both alike."""
    from services.router.service import Router
    from services.router.settings import RouterSettings
    from shared.bus.base import Delivery
    from shared.bus.nats import connect
    from shared.subjects import ROUTER_INFER, worker_status, worker_task

    logging.getLogger("gpuplane").setLevel(logging.WARNING)
    group = CATALOG.groups[0]
    model = group.models[0]
    spec = EQUAL.gpus[0]
    worker_id = "bench-cuda0"
    models = make_gpu(spec).holdable_models()
    worker_bus = await connect(url, service="worker")
    router_bus = await connect(url, service="router")
    client_bus = await connect(url, service="gateway")
    sequence = 0

    def status() -> WorkerStatus:
        nonlocal sequence
        sequence += 1
        return WorkerStatus(
            worker_id=worker_id, host="bench", device="cuda:0", gpu_index=0, backend="simulated",
            state=WorkerState.READY, slots=spec.worker_slots, in_flight=0, queue_depth=0,
            groups_loaded=(group.id,), current_group=group.id, models=models, latency_avg_s=0.001,
            sequence=sequence,
        )

    async def on_task(task: WorkerTask, _: Delivery) -> WorkerResult:
        return WorkerResult(task_id=task.task_id, worker_id=worker_id, device="cuda:0", host="bench",
                            group=task.group, bodies=tuple({"ok": True} for _ in task.request_ids))

    async def heartbeat() -> None:
        while True:
            await worker_bus.publish(worker_status("bench", worker_id), status())
            await asyncio.sleep(0.5)

    async def direct() -> None:
        task = WorkerTask(task_id=uuid.uuid4().hex, request_ids=(uuid.uuid4().hex,), kind=InferenceKind.CHAT,
                          model=model.id, group=group.id, bodies=(BODIES[InferenceKind.CHAT],))
        await client_bus.request(worker_task("bench", worker_id), task, WorkerResult, timeout_s=10)

    async def routed() -> None:
        request = InferenceRequest(request_id=uuid.uuid4().hex, kind=InferenceKind.CHAT, model=model.id,
                                   body=BODIES[InferenceKind.CHAT])
        await client_bus.request(ROUTER_INFER, request, InferenceResult, timeout_s=10)

    await worker_bus.subscribe(worker_task("bench", worker_id), WorkerTask, on_task, max_in_flight=64)
    beating = asyncio.create_task(heartbeat())
    router = Router(router_bus, RouterSettings(nats_url=url, embedding_batch_max=1, seed=0), CATALOG, "bench-router")
    await router.start()
    timers = asyncio.create_task(router.run_timers())
    times: dict[str, list[float]] = {"direct": [], "routed": []}
    calls: dict[str, Callable[[], Awaitable[None]]] = {"direct": direct, "routed": routed}
    try:
        deadline = time.monotonic() + 10
        while worker_id not in router.pools.workers:
            if time.monotonic() > deadline:
                raise RuntimeError("the router never saw the benchmark's worker")
            await asyncio.sleep(0.05)
        for i in range(warmup + samples):
            for name in ("direct", "routed") if i % 2 == 0 else ("routed", "direct"):
                started = time.perf_counter()
                await calls[name]()
                if i >= warmup:
                    times[name].append(time.perf_counter() - started)
    finally:
        timers.cancel()
        beating.cancel()
        await router.close()
        for bus in (client_bus, router_bus, worker_bus):
            await bus.drain()
    return times


