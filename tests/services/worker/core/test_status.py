from __future__ import annotations

from services.worker.core.pool import Pool
from services.worker.core.status import BackendState, WorkerIdentity, build_status
from shared.contracts import Priority, WorkerState
from tests.builders import FIXED_TIME

IDENTITY = WorkerIdentity(
    worker_id="box-cuda0",
    host="box",
    device="cuda:0",
    backend="simulated",
    slots=2,
    gpu_index=0,
    gpu_uuid="GPU-a",
    gpu_name="NVIDIA RTX A5500",
    vram_total_mb=24564,
)


def test_status_carries_identity_pool_and_backend_figures() -> None:
    pool = Pool(2, now=0)
    done = pool.submit(Priority.NORMAL, now=0)
    pool.start_ready(0)
    pool.finish(done, 1, ok=True, service_s=0.25, loaded_group=True)
    pool.submit(Priority.NORMAL, now=1, exclusive=True, label="req-9")
    pool.submit(Priority.NORMAL, now=1)
    pool.start_ready(1)
    backend = BackendState(
        groups_loaded=("embed", "big"),
        current_group="big",
        cpu_cached_groups=("other",),
        models=("big-chat",),
        vram_used_mb=18432,
    )
    status = build_status(
        IDENTITY, WorkerState.READY, pool, backend, sequence=7, utilization_percent=50.0, at=FIXED_TIME
    )
    assert (status.worker_id, status.device, status.gpu_uuid, status.slots, status.vram_total_mb) == (
        "box-cuda0",
        "cuda:0",
        "GPU-a",
        2,
        24564,
    )
    assert (status.in_flight, status.queue_depth, status.exclusive_request) == (1, 1, "req-9")
    assert (status.request_count, status.error_count, status.group_switches, status.latency_avg_s) == (1, 0, 1, 0.25)
    assert status.groups_loaded == ("embed", "big") and status.current_group == "big"
    assert status.cpu_cached_groups == ("other",) and status.models == ("big-chat",) and status.vram_used_mb == 18432
    assert (status.state, status.sequence, status.utilization_percent, status.at) == (
        WorkerState.READY,
        7,
        50.0,
        FIXED_TIME,
    )
