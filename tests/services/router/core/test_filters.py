"""Placement filters: each rule alone (a table per filter), the default order, and ``Pools.place``
running whichever filters the pools hold."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from services.router.core.filters import (
    DEFAULT_FILTERS,
    Alive,
    CircuitClosed,
    Exclusion,
    Filter,
    GpuHealthy,
    NotAvoided,
    NotHeldExclusively,
    Ready,
    ServesModel,
    first_refusal,
)
from services.router.core.model import Placement, PlacementRequest, Wait
from services.router.core.policies.affinity import AffinityLeastLoaded
from services.router.core.pools import Pools, WorkerRecord
from shared.contracts import Route, WorkerState
from tests.builders import make_gpu, make_inventory, make_placement_request, make_worker_status
from tests.services.router.core.helpers import pools_of, record

REQ = make_placement_request("model-a", group="group-a")
Setup = Callable[[Pools], None]


@dataclass(frozen=True)
class Case:
    """One worker (``make_worker_status`` arguments), what happened to the pools, and the question."""

    status: dict[str, Any]
    setup: Setup | None = None
    request: PlacementRequest | None = REQ
    now: float = 0.0


def judge(rule: Filter, case: Case) -> str | None:
    pools = pools_of(make_worker_status(**case.status), worker_timeout_s=3.0)
    if case.setup is not None:
        case.setup(pools)
    return rule.reason(pools, record(pools), case.request, case.now)


def sick_gpu(reason: str | None = "Xid 79", index: int = 0) -> Setup:
    def report(pools: Pools) -> None:
        pools.on_inventory(make_inventory((make_gpu(index, healthy=False, health_reason=reason),)))

    return report


def gpu_disappears(pools: Pools) -> None:
    pools.on_inventory(make_inventory((make_gpu(0),)))
    pools.on_inventory(make_inventory((make_gpu(1),)))


def failures(count: int, at: float = 0.0) -> Setup:
    def fail(pools: Pools) -> None:
        for _ in range(count):
            pools.on_done("w0", at, ok=False)

    return fail


def probe_out(pools: Pools) -> None:
    failures(5)(pools)
    pools.on_sent("w0", 60.0)


def param(rule: Filter, case: Case, reason: str | None, label: str) -> Any:
    return pytest.param(rule, case, reason, id=f"{rule.NAME}-{label}")


@pytest.mark.parametrize(
    ("rule", "case", "reason"),
    [
        # serves_model
        param(ServesModel(), Case({}), None, "offers-the-model"),
        param(ServesModel(), Case({"models": (), "groups": ("group-a",)}), None, "holds-the-group"),
        param(
            ServesModel(),
            Case({"models": ("other",)}),
            "does not serve model-a (nor holds group-a)",
            "neither",
        ),
        param(ServesModel(), Case({"models": ("other",)}, request=None), None, "no-request-keeps-it"),
        # alive
        param(Alive(), Case({}), None, "fresh"),
        param(Alive(), Case({}, now=3.0), None, "at-the-timeout"),
        param(Alive(), Case({}, now=3.5), "silent for 3.5 s", "silent"),
        param(Alive(), Case({"state": WorkerState.STOPPED}), "stopped", "stopped"),
        param(Alive(), Case({"state": WorkerState.STOPPED}, now=9.0), "stopped", "stopped-and-silent"),
        param(Alive(), Case({}, lambda p: p.mark_gone("w0")), "silent for inf s", "marked-gone"),
        # ready
        param(Ready(), Case({}), None, "ready"),
        param(Ready(), Case({"state": WorkerState.DRAINING}), "draining", "draining"),
        param(Ready(), Case({"state": WorkerState.STARTING}), "starting", "starting"),
        # gpu_healthy
        param(GpuHealthy(), Case({}), None, "no-report"),
        param(GpuHealthy(), Case({}, sick_gpu()), "GPU unhealthy (Xid 79)", "sick"),
        param(GpuHealthy(), Case({}, sick_gpu(None)), "GPU unhealthy (reported by the detector)", "no-reason"),
        param(GpuHealthy(), Case({"device": "cuda:1"}, sick_gpu()), None, "another-gpu-sick"),
        param(GpuHealthy(), Case({"device": "cpu"}, sick_gpu()), None, "cpu-worker"),
        param(GpuHealthy(), Case({"gpu_index": None}, sick_gpu()), None, "no-gpu-index"),
        param(
            GpuHealthy(),
            Case({}, gpu_disappears),
            "GPU unhealthy (the detector no longer sees it)",
            "gone",
        ),
        # circuit_closed
        param(CircuitClosed(), Case({}), None, "closed"),
        param(CircuitClosed(), Case({}, failures(4)), None, "below-threshold"),
        param(CircuitClosed(), Case({}, failures(5)), "circuit open", "open"),
        param(CircuitClosed(), Case({}, failures(5), now=60.0), None, "half-open-may-probe"),
        param(CircuitClosed(), Case({}, probe_out, now=60.0), "circuit half-open, probe out", "probe-out"),
        # not_held_exclusively
        param(NotHeldExclusively(), Case({}), None, "free"),
        param(
            NotHeldExclusively(),
            Case({}, lambda p: p.held.update({("box-a", "cuda:0"): "rx"})),
            "GPU held exclusively for request rx",
            "held",
        ),
        param(
            NotHeldExclusively(),
            Case({}, lambda p: p.reserved.update({("box-a", "cuda:0"): "ry"})),
            "GPU held exclusively for request ry",
            "reserved",
        ),
        param(
            NotHeldExclusively(),
            Case({"exclusive_request": "rz"}),
            "GPU held exclusively for request rz",
            "worker-reports-it",
        ),
        param(
            NotHeldExclusively(),
            Case({}, lambda p: p.held.update({("box-b", "cuda:0"): "rx"})),
            None,
            "same-device-other-host",
        ),
        # not_avoided
        param(NotAvoided(), Case({}), None, "first-attempt"),
        param(
            NotAvoided(),
            Case({}, request=make_placement_request(avoid=("w0",))),
            "failed this request already",
            "failed-here",
        ),
        param(NotAvoided(), Case({}, request=make_placement_request(avoid=("w1",))), None, "failed-elsewhere"),
        param(NotAvoided(), Case({}, request=None), None, "no-request-keeps-it"),
    ],
)
def test_filter(rule: Filter, case: Case, reason: str | None) -> None:
    assert judge(rule, case) == reason


def test_default_filters_and_their_order() -> None:
    assert [(f.NAME, f.EXCLUDES) for f in DEFAULT_FILTERS] == [
        ("serves_model", Exclusion.UNRELATED),
        ("alive", Exclusion.DOWN),
        ("ready", Exclusion.DOWN),
        ("gpu_healthy", Exclusion.DOWN),
        ("circuit_closed", Exclusion.DOWN),
        ("not_held_exclusively", Exclusion.BUSY),
        ("not_avoided", Exclusion.BUSY),
    ]


@pytest.mark.parametrize(
    ("case", "first"),
    [
        pytest.param(Case({}), None, id="kept"),
        pytest.param(Case({"models": ("other",), "state": WorkerState.STOPPED}), "serves_model", id="model-first"),
        pytest.param(Case({"state": WorkerState.STOPPED}, sick_gpu()), "alive", id="stopped-before-sick"),
        pytest.param(Case({"state": WorkerState.DRAINING}, sick_gpu()), "ready", id="draining-before-sick"),
        pytest.param(Case({"exclusive_request": "rz"}, failures(5)), "circuit_closed", id="circuit-before-held"),
        pytest.param(
            Case({"exclusive_request": "rz"}, request=make_placement_request(avoid=("w0",))),
            "not_held_exclusively",
            id="held-before-avoided",
        ),
    ],
)
def test_first_refusal_wins(case: Case, first: str | None) -> None:
    pools = pools_of(make_worker_status(**case.status))
    if case.setup is not None:
        case.setup(pools)
    refusal = first_refusal(DEFAULT_FILTERS, pools, record(pools), case.request, case.now)
    assert (None if refusal is None else refusal[0].NAME) == first


# --------------------------------------------------------------------------- pools run their filters


@dataclass(frozen=True)
class NoOddGpus:
    """A fake filter: leaves out workers on odd-numbered GPUs."""

    NAME: ClassVar[str] = "no_odd_gpus"
    EXCLUDES: ClassVar[Exclusion] = Exclusion.BUSY

    def reason(self, pools: Pools, record: WorkerRecord, request: PlacementRequest | None, now: float) -> str | None:
        index = record.status.gpu_index
        return None if index is None or index % 2 == 0 else "odd GPU"


def test_place_runs_the_pools_filters_and_lists_their_reasons() -> None:
    pools = pools_of(make_worker_status("w0", device="cuda:1"), make_worker_status("w1", device="cuda:2"))
    pools.filters = (*DEFAULT_FILTERS, NoOddGpus())
    decision = pools.place(REQ, 1.0, AffinityLeastLoaded(), random.Random(1))
    assert isinstance(decision, Placement) and decision.worker_id == "w1"

    pools.on_status(make_worker_status("w1", device="cuda:2", state=WorkerState.DRAINING, sequence=2), 1.0)
    assert pools.place(REQ, 1.0, AffinityLeastLoaded(), random.Random(1)) == Wait(
        ("w0: odd GPU", "w1: draining"), stuck=False
    )
    assert pools.why_not(record(pools, "w0"), 1.0) == "odd GPU"
    assert pools.why_broken(record(pools, "w0"), 1.0) is None  # a BUSY refusal is not broken


def test_without_filters_every_serving_gpu_worker_is_a_candidate() -> None:
    pools = pools_of(make_worker_status("w0", state=WorkerState.DRAINING))
    pools.filters = ()
    decision = pools.place(REQ, 1.0, AffinityLeastLoaded(), random.Random(1))
    assert decision == Placement("w0", Route.LEAST_LOADED, "soonest to finish (~5.50 s, loads group-a)")
