"""Pools.place: filtering, the policy's pick, retries, CPU fallback and exclusive GPUs."""

from __future__ import annotations

from typing import Any

import pytest

from services.router.core.model import Infeasible, Placement, Wait
from services.router.core.policies.affinity import AffinityLeastLoaded
from services.router.core.pools import Pools
from shared.contracts import Route, WorkerState, WorkerStatus
from tests.builders import make_gpu, make_inventory, make_placement_request, make_worker_status
from tests.services.router.core.helpers import RecordingPolicy, pools_of, rng

MODEL, GROUP = "model-a", "group-a"
REQ = make_placement_request(MODEL, group=GROUP)
CPU_FALLBACK = Placement("cpu", Route.CPU_FALLBACK, "no healthy GPU worker; small model on CPU")


def gpu(worker_id: str = "w0", index: int = 0, **kw: Any) -> WorkerStatus:
    return make_worker_status(worker_id, device=f"cuda:{index}", **kw)


def cpu(worker_id: str = "cpu", **kw: Any) -> WorkerStatus:
    return make_worker_status(worker_id, device="cpu", **kw)


def assert_waits(decision: object, reasons: tuple[str, ...]) -> None:
    """Not stuck, and these reasons first (then the policy's own: which full worker it waits for)."""
    assert isinstance(decision, Wait) and not decision.stuck, decision
    assert decision.reasons[: len(reasons)] == reasons


def place(pools: Pools, request: Any = REQ, now: float = 1.0, policy: Any = None, **kw: Any) -> Any:
    return pools.place(request, now, policy or AffinityLeastLoaded(), rng(), **kw)


def sick(pools: Pools, *indices: int, host: str = "box-a") -> None:
    gpus = tuple(make_gpu(i, healthy=i not in indices, health_reason="Xid 79") for i in range(4))
    pools.on_inventory(make_inventory(gpus, host=host))


# --------------------------------------------------------------------------- unknown models


@pytest.mark.parametrize(
    ("statuses", "reason"),
    [
        pytest.param((), "no worker serves model 'model-a'; models: none yet", id="no-workers"),
        pytest.param(
            (gpu("w0", models=("zeta", "beta")), cpu(models=("alpha", "beta"))),
            "no worker serves model 'model-a'; models: alpha, beta, zeta",
            id="lists-offered-models",
        ),
    ],
)
def test_unknown_model_is_infeasible(statuses: tuple[WorkerStatus, ...], reason: str) -> None:
    pools = pools_of(*statuses)
    decision = place(pools, known_model=False)
    assert decision == Infeasible(reason, "model")
    assert decision.not_found


def test_unknown_model_is_infeasible_even_with_exclusive_gpu() -> None:
    pools = pools_of(gpu(models=("other",)))
    decision = place(pools, known_model=False, exclusive_gpu="cuda:0")
    assert isinstance(decision, Infeasible) and decision.field == "model"
    assert pools.reserved == {}


def test_catalog_unknown_but_served_model_is_placed() -> None:
    pools = pools_of(gpu())
    assert isinstance(place(pools, known_model=False), Placement)


def test_known_model_nobody_serves_yet_waits_stuck() -> None:
    pools = pools_of(gpu(models=("other",)))
    assert place(pools) == Wait(("no worker serves model-a yet",), stuck=True)


# --------------------------------------------------------------------------- filtering


def test_policy_sees_only_workers_that_may_take_the_request() -> None:
    pools = pools_of(
        gpu("ok-model", 0),
        gpu("ok-group", 1, models=(), groups=(GROUP,)),
        gpu("not-serving", 0, models=("other",)),
        cpu("cpu"),
        gpu("draining", 1, state=WorkerState.DRAINING),
        gpu("starting", 1, state=WorkerState.STARTING),
        gpu("full", 1, in_flight=1, queue_depth=8),
        gpu("sick", 2),
        gpu("held", 3),
        gpu("avoided", 1),
        gpu("excl", 1, exclusive_request="rx"),
    )
    sick(pools, 2)
    pools.held[("box-a", "cuda:3")] = "rh"
    policy = RecordingPolicy()
    request = make_placement_request(MODEL, group=GROUP, avoid=("avoided",))
    decision = place(pools, request, policy=policy)
    assert policy.ids == ["full", "ok-group", "ok-model"]  # a full worker is shown: a policy may wait for it
    assert decision == Placement("ok-group", Route.RETRY, "the fake's pick; earlier attempt failed")


def test_policy_sees_room_and_load() -> None:
    pools = pools_of(gpu("w0", in_flight=1, queue_depth=2, slots=2, latency_avg_s=0.3, error_count=1, request_count=2))
    pools.on_sent("w0", 0.5)
    policy = RecordingPolicy()
    place(pools, policy=policy)
    (snap,) = policy.seen[-1]
    assert (snap.load, snap.has_room, snap.latency_avg_s, snap.error_rate) == (4, True, 0.3, 0.5)


def test_silent_worker_is_left_out() -> None:
    pools = pools_of(gpu("w0"), gpu("w1", 1))
    pools.on_status(gpu("w1", 1, sequence=2), 4.0)
    assert place(pools, now=4.5) == Placement("w1", Route.LEAST_LOADED, "soonest to finish (~5.50 s, loads group-a)")


def test_affinity_placement_through_pools() -> None:
    pools = pools_of(gpu("w0", groups=(GROUP,), in_flight=1, request_count=1), gpu("w1", 1))
    assert place(pools) == Placement("w0", Route.AFFINITY, "holds group-a (~1.00 s)")


def test_all_full_waits_not_stuck() -> None:
    pools = pools_of(gpu("w0", in_flight=1, queue_depth=8), gpu("w1", 1, slots=2, in_flight=2, queue_depth=8))
    assert_waits(place(pools), ("w0: full (9 requests for 1 slots)", "w1: full (10 requests for 2 slots)"))


def test_full_and_down_waits_not_stuck() -> None:
    pools = pools_of(gpu("w0", in_flight=1, queue_depth=8), gpu("w1", 1, state=WorkerState.DRAINING))
    assert_waits(place(pools), ("w0: full (9 requests for 1 slots)", "w1: draining"))


def test_no_gpu_worker_up_waits_stuck() -> None:
    pools = pools_of(gpu("w0", state=WorkerState.DRAINING), gpu("w1", 1), gpu("w2", 2))
    sick(pools, 1)
    pools.on_status(gpu("w0", state=WorkerState.DRAINING, sequence=2), 3.5)
    pools.on_status(gpu("w1", 1, sequence=2), 3.5)
    assert place(pools, now=4.0) == Wait(
        ("w0: draining", "w1: GPU unhealthy (Xid 79)", "w2: silent for 4.0 s"), stuck=True
    )


@pytest.mark.parametrize(
    ("policy_pick", "statuses", "reasons"),
    [
        pytest.param(None, (gpu("w0"),), ("no room",), id="no-other-reasons"),
        pytest.param(
            None, (gpu("w0"), gpu("w1", 1, state=WorkerState.DRAINING)), ("w1: draining", "no room"), id="with-reasons"
        ),
    ],
)
def test_policy_may_keep_the_request_queued(
    policy_pick: str | None, statuses: tuple[WorkerStatus, ...], reasons: tuple[str, ...]
) -> None:
    pools = pools_of(*statuses)
    assert place(pools, policy=RecordingPolicy(pick=policy_pick)) == Wait(reasons, stuck=False)


# --------------------------------------------------------------------------- retries


def test_retry_goes_elsewhere_even_from_the_holder() -> None:
    pools = pools_of(gpu("w0", groups=(GROUP,)), gpu("w1", 1))
    request = make_placement_request(MODEL, group=GROUP, avoid=("w0",))
    decision = place(pools, request)
    assert isinstance(decision, Placement)
    assert (decision.worker_id, decision.route) == ("w1", Route.RETRY)
    assert decision.reason == "soonest to finish (~5.50 s, loads group-a); earlier attempt failed"


def test_retry_reasons_name_the_failed_worker() -> None:
    pools = pools_of(gpu("w0"), gpu("w1", 1, in_flight=1, queue_depth=8))
    request = make_placement_request(MODEL, group=GROUP, avoid=("w0",))
    assert_waits(place(pools, request), ("w0: failed this request already", "w1: full (9 requests for 1 slots)"))


def test_retry_with_every_worker_failed_is_not_a_silent_endless_wait() -> None:
    pools = pools_of(gpu("w0"))
    request = make_placement_request(MODEL, group=GROUP, avoid=("w0",))
    decision = place(pools, request)
    assert isinstance(decision, Placement) or (isinstance(decision, Wait) and decision.stuck)


# --------------------------------------------------------------------------- CPU fallback


@pytest.mark.parametrize(
    ("statuses", "sick_gpus", "expected"),
    [
        pytest.param((gpu("w0"), cpu()), (0,), CPU_FALLBACK, id="gpu-unhealthy"),
        pytest.param((gpu("w0", state=WorkerState.DRAINING), cpu()), (), CPU_FALLBACK, id="gpu-draining"),
        pytest.param((gpu("w0", models=("other",)), cpu()), (), CPU_FALLBACK, id="only-cpu-serves-it"),
        pytest.param((cpu(),), (), CPU_FALLBACK, id="cpu-only-pool"),
        pytest.param(
            (gpu("w0"), cpu("cpu-b", in_flight=1), cpu("cpu-c")),
            (0,),
            Placement("cpu-c", Route.CPU_FALLBACK, "no healthy GPU worker; small model on CPU"),
            id="least-loaded-cpu",
        ),
        pytest.param(
            (gpu("w0"), cpu("cpu-b"), cpu("cpu-a")),
            (0,),
            Placement("cpu-a", Route.CPU_FALLBACK, "no healthy GPU worker; small model on CPU"),
            id="tie-by-worker-id",
        ),
        pytest.param(
            (gpu("w0"), cpu()),
            (),
            Placement("w0", Route.LEAST_LOADED, "soonest to finish (~5.50 s, loads group-a)"),
            id="never-while-a-gpu-is-healthy",
        ),
        pytest.param(
            (gpu("w0", in_flight=1, queue_depth=8), cpu()),
            (),
            Wait(
                ("w0: full (9 requests for 1 slots)", "waits for w0 (soonest to finish (~10.00 s, loads group-a))"),
                stuck=False,
            ),
            id="never-when-gpus-are-merely-full",
        ),
        pytest.param(
            (gpu("w0"), cpu(models=("tiny",))),
            (0,),
            Wait(("w0: GPU unhealthy (Xid 79)",), stuck=True),
            id="never-for-a-model-the-cpu-lacks",
        ),
        pytest.param(
            (gpu("w0"), cpu(in_flight=1, queue_depth=8)),
            (0,),
            Wait(("w0: GPU unhealthy (Xid 79)",), stuck=True),
            id="never-to-a-full-cpu",
        ),
        pytest.param(
            (gpu("w0"), cpu(state=WorkerState.DRAINING)),
            (0,),
            Wait(("w0: GPU unhealthy (Xid 79)",), stuck=True),
            id="never-to-a-draining-cpu",
        ),
        pytest.param(
            (cpu(exclusive_request="rx"),),
            (),
            Wait((), stuck=True),
            id="never-to-a-cpu-that-is-not-free",
        ),
    ],
)
def test_cpu_fallback(statuses: tuple[WorkerStatus, ...], sick_gpus: tuple[int, ...], expected: object) -> None:
    pools = pools_of(*statuses)
    if sick_gpus:
        sick(pools, *sick_gpus)
    assert place(pools) == expected


def test_cpu_fallback_ignores_the_policy() -> None:
    pools = pools_of(gpu("w0"), cpu())
    sick(pools, 0)
    policy = RecordingPolicy()
    assert place(pools, policy=policy) == CPU_FALLBACK
    assert policy.seen == []


def test_no_cpu_fallback_for_a_model_not_marked_small() -> None:
    pools = pools_of(gpu("w0"), cpu())
    sick(pools, 0)
    decision = place(pools, make_placement_request(MODEL, group=GROUP, small=False))
    assert isinstance(decision, Wait) and decision.stuck


def test_cpu_fallback_retry_goes_elsewhere() -> None:
    pools = pools_of(cpu("cpu-a"), cpu("cpu-b"))
    request = make_placement_request(MODEL, group=GROUP, avoid=("cpu-a",))
    decision = place(pools, request)
    assert isinstance(decision, Placement) and decision.worker_id == "cpu-b"


# --------------------------------------------------------------------------- exclusive: resolve_device


def two_hosts() -> Pools:
    return pools_of(
        gpu("a0", 0, host="box-a"), gpu("a1", 1, host="box-a"), gpu("b0", 0, host="box-b"), cpu(host="box-c")
    )


@pytest.mark.parametrize(
    ("pools_factory", "label", "expected"),
    [
        pytest.param(lambda: pools_of(gpu("w0", 0), gpu("w1", 1)), "cuda:1", ("box-a", "cuda:1"), id="plain"),
        pytest.param(lambda: pools_of(gpu("w0", 0), gpu("w1", 1)), "box-a/cuda:0", ("box-a", "cuda:0"), id="with-host"),
        pytest.param(two_hosts, "cuda:1", ("box-a", "cuda:1"), id="unique-across-hosts"),
        pytest.param(two_hosts, "box-b/cuda:0", ("box-b", "cuda:0"), id="host-disambiguates"),
        pytest.param(
            lambda: pools_of(gpu("w0", 0), gpu("w1", 1)),
            "cuda:7",
            Infeasible("no worker runs on cuda:7; devices with workers: cuda:0, cuda:1", "exclusive_gpu"),
            id="unknown-device",
        ),
        pytest.param(
            lambda: pools_of(gpu("w0", 0)),
            "box-z/cuda:0",
            Infeasible("no worker runs on box-z/cuda:0; devices with workers: cuda:0", "exclusive_gpu"),
            id="unknown-host",
        ),
        pytest.param(
            two_hosts,
            "cuda:3",
            Infeasible(
                "no worker runs on cuda:3; devices with workers: box-a/cuda:0, box-a/cuda:1, box-b/cuda:0",
                "exclusive_gpu",
            ),
            id="unknown-device-many-hosts",
        ),
        pytest.param(
            lambda: pools_of(cpu()),
            "cuda:0",
            Infeasible("no worker runs on cuda:0; devices with workers: none", "exclusive_gpu"),
            id="cpu-only",
        ),
        pytest.param(
            two_hosts,
            "cuda:0",
            Infeasible(
                "cuda:0 exists on several hosts; name one of: box-a/cuda:0, box-a/cuda:1, box-b/cuda:0",
                "exclusive_gpu",
                not_found=False,
            ),
            id="ambiguous",
        ),
        pytest.param(
            lambda: pools_of(gpu("w0", 0)),
            "gpu0",
            Infeasible(
                "exclusive_gpu must look like cuda:N or host/cuda:N, not 'gpu0'", "exclusive_gpu", not_found=False
            ),
            id="malformed",
        ),
        pytest.param(
            two_hosts,
            "box-c/cpu",
            Infeasible(
                "exclusive_gpu must look like cuda:N or host/cuda:N, not 'box-c/cpu'", "exclusive_gpu", not_found=False
            ),
            id="cpu-is-not-a-gpu",
        ),
        pytest.param(
            lambda: pools_of(gpu("w0", 0)),
            "",
            Infeasible("exclusive_gpu must look like cuda:N or host/cuda:N, not ''", "exclusive_gpu", not_found=False),
            id="empty",
        ),
    ],
)
def test_resolve_device(pools_factory: Any, label: str, expected: object) -> None:
    assert pools_factory().resolve_device(label) == expected


def test_bad_exclusive_label_reserves_nothing() -> None:
    pools = pools_of(gpu("w0"))
    assert isinstance(place(pools, exclusive_gpu="cuda:9"), Infeasible)
    assert pools.reserved == {} and pools.held == {}


# --------------------------------------------------------------------------- exclusive: the life cycle


def exclusive(request_id: str = "rx") -> Any:
    return make_placement_request(MODEL, group=GROUP, request_id=request_id)


DEV = ("box-a", "cuda:0")


def test_exclusive_on_an_idle_device_is_placed_at_once() -> None:
    pools = pools_of(gpu("w0", 0), gpu("w1", 1))
    decision = place(pools, exclusive(), exclusive_gpu="cuda:0")
    assert decision == Placement("w0", Route.EXCLUSIVE, "exclusive use of cuda:0 requested", exclusive_device="cuda:0")
    assert pools.reserved == {DEV: "rx"}


def test_exclusive_life_cycle() -> None:
    pools = pools_of(gpu("w0", 0, in_flight=1), gpu("w1", 1))
    # busy: it waits, and reserves the device
    assert place(pools, exclusive(), exclusive_gpu="cuda:0") == Wait(("w0: 1 requests still running",))
    assert pools.reserved == {DEV: "rx"}
    # nothing new starts on that device meanwhile; other devices carry on
    policy = RecordingPolicy()
    assert place(pools, policy=policy) == Placement("w1", Route.AFFINITY, "the fake's pick")
    assert policy.ids == ["w1"]
    pools.on_status(gpu("w1", 1, sequence=2, in_flight=1, queue_depth=8), 1.0)
    assert_waits(place(pools), ("w0: GPU held exclusively for request rx", "w1: full (9 requests for 1 slots)"))
    # another exclusive request for the device waits its turn, without taking the reservation
    assert place(pools, exclusive("ry"), exclusive_gpu="cuda:0") == Wait(
        ("cuda:0 is reserved for exclusive request rx",)
    )
    assert pools.reserved == {DEV: "rx"}
    # still busy: still waits
    assert place(pools, exclusive(), exclusive_gpu="cuda:0", now=1.5) == Wait(("w0: 1 requests still running",))
    # idle now: placed
    pools.on_status(gpu("w0", 0, sequence=2, in_flight=0), 2.0)
    decision = place(pools, exclusive(), exclusive_gpu="cuda:0", now=2.0)
    assert decision == Placement("w0", Route.EXCLUSIVE, "exclusive use of cuda:0 requested", exclusive_device="cuda:0")
    # sent: the reservation becomes a hold
    pools.on_sent("w0", 2.0, exclusive_for="rx")
    assert (pools.reserved, pools.held) == ({}, {DEV: "rx"})
    assert place(pools, exclusive("ry"), exclusive_gpu="cuda:0", now=2.0) == Wait(("cuda:0 runs exclusive request rx",))
    assert pools.why_not(pools.workers["w0"], 2.0) == "GPU held exclusively for request rx"
    # finished: released, the device takes ordinary work again
    pools.on_done("w0", 3.0, ok=True)
    pools.release("rx")
    assert (pools.reserved, pools.held) == ({}, {})
    assert pools.why_not(pools.workers["w0"], 3.0) is None
    assert isinstance(place(pools, exclusive("ry"), exclusive_gpu="cuda:0", now=3.0), Placement)


def test_exclusive_waits_for_every_worker_on_the_device() -> None:
    pools = pools_of(
        gpu("w0", 0, models=("other",)), gpu("w1", 0, in_flight=0, queue_depth=1), gpu("w2", 1, in_flight=3)
    )
    assert place(pools, exclusive(), exclusive_gpu="cuda:0") == Wait(("w1: 1 requests still running",))
    pools.on_status(gpu("w1", 0, sequence=2), 1.0)
    decision = place(pools, exclusive(), exclusive_gpu="cuda:0")
    assert isinstance(decision, Placement) and decision.worker_id == "w1"


def test_exclusive_counts_what_this_router_sent() -> None:
    pools = pools_of(gpu("w0", 0))
    pools.on_sent("w0", 0.5)
    assert place(pools, exclusive(), exclusive_gpu="cuda:0") == Wait(("w0: 1 requests still running",))


def test_exclusive_waits_while_the_worker_reports_another_exclusive_request() -> None:
    pools = pools_of(gpu("w0", 0, in_flight=1, exclusive_request="other-router-request"))
    assert place(pools, exclusive(), exclusive_gpu="cuda:0") == Wait(("w0: 1 requests still running",))


def test_exclusive_picks_the_first_usable_worker_by_id() -> None:
    pools = pools_of(gpu("w2", 0), gpu("w1", 0))
    decision = place(pools, exclusive(), exclusive_gpu="cuda:0")
    assert isinstance(decision, Placement) and decision.worker_id == "w1"


def test_exclusive_on_another_host() -> None:
    pools = two_hosts()
    decision = place(pools, exclusive(), exclusive_gpu="box-b/cuda:0")
    assert decision == Placement(
        "b0", Route.EXCLUSIVE, "exclusive use of box-b/cuda:0 requested", exclusive_device="box-b/cuda:0"
    )
    assert pools.reserved == {("box-b", "cuda:0"): "rx"}


@pytest.mark.parametrize(
    ("statuses", "sick_gpus", "now", "reasons"),
    [
        pytest.param((gpu("w0", state=WorkerState.DRAINING),), (), 1.0, ("w0: draining",), id="draining"),
        pytest.param((gpu("w0"),), (0,), 1.0, ("w0: GPU unhealthy (Xid 79)",), id="gpu-unhealthy"),
        pytest.param((gpu("w0"),), (), 10.0, ("no live worker on cuda:0",), id="silent"),
        pytest.param((gpu("w0", state=WorkerState.STOPPED),), (), 1.0, ("no live worker on cuda:0",), id="stopped"),
    ],
)
def test_exclusive_without_a_usable_worker_waits_stuck(
    statuses: tuple[WorkerStatus, ...], sick_gpus: tuple[int, ...], now: float, reasons: tuple[str, ...]
) -> None:
    pools = pools_of(*statuses)
    if sick_gpus:
        sick(pools, *sick_gpus)
    assert place(pools, exclusive(), exclusive_gpu="cuda:0", now=now) == Wait(reasons, stuck=True)
    assert pools.reserved == {DEV: "rx"}


@pytest.mark.parametrize(
    ("statuses", "can"),
    [
        pytest.param((gpu("w0", models=("other",)),), "none up now", id="nowhere"),
        pytest.param((gpu("w0", models=("other",)), gpu("w1", 1)), "cuda:1", id="elsewhere"),
    ],
)
def test_exclusive_on_a_gpu_that_cannot_load_the_model_is_refused_at_once(
    statuses: tuple[WorkerStatus, ...], can: str
) -> None:
    pools = pools_of(*statuses)
    decision = place(pools, exclusive(), exclusive_gpu="cuda:0")
    assert isinstance(decision, Infeasible) and not decision.not_found and decision.field == "exclusive_gpu"
    assert "cuda:0 cannot serve" in decision.reason and f"GPUs that can: {can}" in decision.reason
    assert pools.reserved == {}, "nothing is held for a request that is refused"


def test_exclusive_ignores_avoid_for_the_named_device() -> None:
    pools = pools_of(gpu("w0"))
    request = make_placement_request(MODEL, group=GROUP, request_id="rx", avoid=("w0",))
    decision = place(pools, request, exclusive_gpu="cuda:0")
    assert isinstance(decision, Placement) and decision.route is Route.EXCLUSIVE


@pytest.mark.parametrize(
    ("reserved", "held", "release", "left_reserved", "left_held"),
    [
        pytest.param({DEV: "rx"}, {}, "rx", {}, {}, id="reservation"),
        pytest.param({}, {DEV: "rx"}, "rx", {}, {}, id="hold"),
        pytest.param({DEV: "rx"}, {("box-a", "cuda:1"): "ry"}, "ry", {DEV: "rx"}, {}, id="only-its-own"),
        pytest.param({DEV: "rx"}, {}, "nobody", {DEV: "rx"}, {}, id="unknown-id"),
    ],
)
def test_release(
    reserved: dict[Any, str],
    held: dict[Any, str],
    release: str,
    left_reserved: dict[Any, str],
    left_held: dict[Any, str],
) -> None:
    pools = Pools()
    pools.reserved.update(reserved)
    pools.held.update(held)
    pools.release(release)
    assert (pools.reserved, pools.held) == (left_reserved, left_held)


def test_on_sent_without_exclusive_leaves_reservations() -> None:
    pools = pools_of(gpu("w0"))
    pools.reserved[DEV] = "rx"
    pools.on_sent("w0", 0.0)
    assert (pools.reserved, pools.held) == ({DEV: "rx"}, {})


def test_a_request_only_a_held_gpu_serves_waits_without_a_deadline() -> None:
    """Busy, not broken: the router must not give up on it while an exclusive request runs."""
    pools = pools_of(gpu("w0", 0))
    pools.held[("box-a", "cuda:0")] = "rx"
    decision = place(pools)
    assert isinstance(decision, Wait) and not decision.stuck
    assert any("held exclusively for request rx" in r for r in decision.reasons)
