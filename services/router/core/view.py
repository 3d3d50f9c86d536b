"""What a router shows of itself (``RouterState``), built from the core's tables: pure, ``now`` passed in."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from services.router.core.lifecycle import Answer, Lifecycle
from services.router.core.pools import WorkerRecord
from shared.contracts import (
    DeviceStats,
    GroupInfo,
    InferenceKind,
    Inventory,
    InventorySource,
    ModelInfo,
    RouterState,
    RoutingDecision,
    WorkerView,
)

MB_PER_GB = 1024.0
DeviceKey = tuple[str, str]


def record_peak(peaks: dict[DeviceKey, float], key: DeviceKey, utilization: float) -> float:
    """Keep the highest utilization seen per device; returns it."""
    peak = max(peaks.get(key, 0.0), utilization)
    peaks[key] = peak
    return peak


def device_stats(
    records: Iterable[WorkerRecord], inventories: Iterable[Inventory], peaks: dict[DeviceKey, float]
) -> tuple[DeviceStats, ...]:
    """Per-GPU figures: the detector's, with the simulated workers' load where the fleet is simulated.

    ``records`` are the live workers; a device no inventory lists is shown from its workers' reports.
    """
    by_device: dict[DeviceKey, list[WorkerRecord]] = {}
    for record in records:
        if record.status.device != "cpu":
            by_device.setdefault(record.key, []).append(record)
    stats: dict[DeviceKey, DeviceStats] = {}
    for inv in inventories:
        simulated = inv.source is InventorySource.SIMULATED
        for gpu in inv.gpus:
            key = (inv.host, f"cuda:{gpu.index}")
            workers = by_device.get(key, [])
            util = gpu.utilization_percent or 0.0
            used_mb = float(gpu.vram_used_mb)
            if simulated and workers:
                util = max((w.status.utilization_percent or 0.0) for w in workers)
                used_mb = max(used_mb, float(sum(w.status.vram_used_mb or 0 for w in workers)))
            stats[key] = _stats(key, gpu.name, util, used_mb, float(gpu.vram_total_mb), gpu.healthy, peaks)
    for key, workers in by_device.items():
        if key in stats:
            continue
        status = workers[0].status
        total = float(status.vram_total_mb or 0)
        used = float(sum(w.status.vram_used_mb or 0 for w in workers))
        util = max((w.status.utilization_percent or 0.0) for w in workers)
        stats[key] = _stats(key, status.gpu_name, util, used, total, True, peaks)
    return tuple(stats[k] for k in sorted(stats))


def _stats(
    key: DeviceKey,
    name: str | None,
    util: float,
    used_mb: float,
    total_mb: float,
    healthy: bool,
    peaks: dict[DeviceKey, float],
) -> DeviceStats:
    return DeviceStats(
        host=key[0],
        device=key[1],
        name=name,
        utilization=round(util, 1),
        memory_used=round(used_mb / MB_PER_GB, 2),
        memory_total=round(total_mb / MB_PER_GB, 2),
        memory_percent=round(100.0 * used_mb / total_mb, 1) if total_mb else 0.0,
        peak_utilization=round(record_peak(peaks, key, util), 1),
        healthy=healthy,
    )


def groups(lifecycle: Lifecycle) -> tuple[GroupInfo, ...]:
    """The catalog's groups, plus one per model a worker serves that the catalog does not name."""
    infos = list(lifecycle.catalog.infos())
    known = {m.id for g in infos for m in g.models}
    extra = sorted({m for r in lifecycle.pools.workers.values() for m in r.status.models if m not in known})
    infos.extend(
        GroupInfo(group_id=m, models=(ModelInfo(id=m, kind=InferenceKind.CHAT),), vram_gb=0.0, load_time_s=0.0)
        for m in extra
    )
    return tuple(infos)


def decision(at: datetime, answer: Answer) -> RoutingDecision:
    return RoutingDecision(
        at=at,
        model=answer.model,
        request_id=answer.request_id,
        group=answer.group,
        worker_id=answer.worker_id,
        host=answer.host,
        device=answer.device,
        route=answer.route,
        reason=answer.reason,
        attempts=answer.attempts,
        batch_size=answer.batch_size,
        queued_s=answer.queued_s,
    )


def router_state(
    instance: str,
    lifecycle: Lifecycle,
    inventories: Iterable[Inventory],
    peaks: dict[DeviceKey, float],
    in_flight: int,
    now: float,
) -> RouterState:
    """The whole state as the console and ``gpuplane`` show it."""
    pools = lifecycle.pools
    views = []
    for record in sorted(pools.workers.values(), key=lambda r: (r.key, r.status.worker_id)):
        why = pools.why_not(record, now)
        views.append(
            WorkerView(
                status=record.status,
                alive=pools.alive(record, now),
                gpu_healthy=pools.gpu_ok(record)[0],
                circuit=record.circuit.state(now).value,
                eligible=why is None,
                why_not=why,
            )
        )
    alive = [r for r in pools.workers.values() if pools.alive(r, now)]
    return RouterState(
        router=instance,
        policy=lifecycle.policy.NAME,
        workers=tuple(views),
        devices=device_stats(alive, inventories, peaks),
        groups=groups(lifecycle),
        queued=lifecycle.queue.depths(),
        queue_limit=lifecycle.queue.limit,
        in_flight=in_flight,
        decisions=tuple(decision(at, a) for at, a in lifecycle.decisions),
    )
