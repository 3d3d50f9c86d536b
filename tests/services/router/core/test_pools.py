"""Pools: statuses and inventories in, judgement of each worker (alive, why not, load, room) and the
bookkeeping of sent and answered tasks. Time is the ``now`` argument throughout."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.router.core.circuit import CircuitState
from services.router.core.pools import Pools, PoolSettings, device_label
from shared.contracts import WorkerState
from tests.builders import make_gpu, make_inventory, make_placement_request, make_worker_status
from tests.services.router.core.helpers import pools_of, record


def test_settings_defaults() -> None:
    s = PoolSettings()
    assert (s.worker_timeout_s, s.worker_queue_limit, s.failure_threshold, s.reset_s, s.forget_after_s) == (
        3.0,
        1000,
        5,
        60.0,
        300.0,
    )


@pytest.mark.parametrize(
    ("host", "device", "many", "label"),
    [
        pytest.param("box", "cuda:1", False, "cuda:1", id="one-host"),
        pytest.param("box", "cuda:1", True, "box/cuda:1", id="many-hosts"),
    ],
)
def test_device_label(host: str, device: str, many: bool, label: str) -> None:
    assert device_label(host, device, many) == label


# --------------------------------------------------------------------------- on_status


def test_first_status_registers_the_worker() -> None:
    pools = Pools(PoolSettings(failure_threshold=2, reset_s=7.0))
    assert pools.on_status(make_worker_status("w0"), 1.0) is None
    rec = record(pools)
    assert rec.seen_at == 1.0
    assert (rec.circuit.failure_threshold, rec.circuit.reset_s) == (2, 7.0)
    assert (rec.sent_since_status, rec.outstanding) == (0, 0)


def test_stopped_status_says_so() -> None:
    pools = pools_of(make_worker_status(sequence=1))
    assert pools.on_status(make_worker_status(sequence=2, state=WorkerState.STOPPED), 1.0) == "it stopped"
    assert record(pools).status.state is WorkerState.STOPPED


@pytest.mark.parametrize(
    ("second_sequence", "second_state", "lost"),
    [
        pytest.param(6, WorkerState.READY, None, id="newer"),
        pytest.param(5, WorkerState.READY, None, id="same-sequence"),
        pytest.param(4, WorkerState.READY, "it restarted", id="lower-is-a-new-process"),
        pytest.param(0, WorkerState.STARTING, "it restarted", id="restart-resets-sequence"),
        pytest.param(4, WorkerState.STOPPED, "it stopped", id="stopped"),
    ],
)
def test_status_sequence_tells_a_restart(second_sequence: int, second_state: WorkerState, lost: str | None) -> None:
    pools = pools_of(make_worker_status(sequence=5, in_flight=1))
    pools.on_sent("w0", 0.5)
    newer = make_worker_status(sequence=second_sequence, state=second_state, in_flight=0)
    assert pools.on_status(newer, 2.0) == lost
    rec = record(pools)
    assert rec.status is newer
    assert (rec.seen_at, rec.sent_since_status) == (2.0, 0)


# --------------------------------------------------------------------------- alive / why_not


@pytest.mark.parametrize(
    ("now", "alive"),
    [
        pytest.param(0.0, True, id="just-seen"),
        pytest.param(3.0, True, id="at-timeout"),
        pytest.param(3.01, False, id="past-timeout"),
    ],
)
def test_alive_by_timeout(now: float, alive: bool) -> None:
    pools = pools_of(make_worker_status())
    assert pools.alive(record(pools), now) is alive


def test_stopped_is_not_alive_even_when_fresh() -> None:
    pools = pools_of(make_worker_status(state=WorkerState.STOPPED))
    assert not pools.alive(record(pools), 0.0)


def _open_circuit(pools: Pools) -> None:
    for _ in range(pools.settings.failure_threshold):
        pools.on_sent("w0", 0.0)
        pools.on_done("w0", 0.0, ok=False)


def _probe_out(pools: Pools) -> None:
    _open_circuit(pools)
    pools.on_sent("w0", pools.settings.reset_s)


Setup = Callable[[Pools], object]


@pytest.mark.parametrize(
    ("status_kw", "setup", "now", "reason"),
    [
        pytest.param({}, None, 1.0, None, id="ready"),
        pytest.param({}, None, 3.5, "silent for 3.5 s", id="silent"),
        pytest.param({"state": WorkerState.STOPPED}, None, 0.0, "stopped", id="stopped"),
        pytest.param({"state": WorkerState.STOPPED}, None, 99.0, "stopped", id="stopped-and-silent"),
        pytest.param({"state": WorkerState.DRAINING}, None, 0.0, "draining", id="draining"),
        pytest.param({"state": WorkerState.STARTING}, None, 0.0, "starting", id="starting"),
        pytest.param(
            {},
            lambda p: p.on_inventory(make_inventory((make_gpu(0, healthy=False, health_reason="Xid 79"),))),
            0.0,
            "GPU unhealthy (Xid 79)",
            id="gpu-unhealthy",
        ),
        pytest.param(
            {},
            lambda p: p.on_inventory(make_inventory((make_gpu(0, healthy=False),))),
            0.0,
            "GPU unhealthy (reported by the detector)",
            id="gpu-unhealthy-no-reason",
        ),
        pytest.param(
            {"device": "cuda:1"},
            lambda p: (p.on_inventory(make_inventory()), p.on_inventory(make_inventory((make_gpu(0),)))),
            0.0,
            "GPU unhealthy (the detector no longer sees it)",
            id="gpu-disappeared",
        ),
        pytest.param(
            {},
            lambda p: p.on_inventory(make_inventory((make_gpu(0, healthy=False),), host="box-b")),
            0.0,
            None,
            id="other-host-gpu-unhealthy",
        ),
        pytest.param(
            {"device": "cuda:1"},
            lambda p: p.on_inventory(make_inventory((make_gpu(0, healthy=False),))),
            0.0,
            None,
            id="other-gpu-unhealthy",
        ),
        pytest.param(
            {"device": "cpu"},
            lambda p: p.on_inventory(make_inventory((make_gpu(0, healthy=False),))),
            0.0,
            None,
            id="cpu-worker-ignores-gpu-health",
        ),
        pytest.param(
            {"gpu_index": None},
            lambda p: p.on_inventory(make_inventory((make_gpu(0, healthy=False),))),
            0.0,
            None,
            id="no-gpu-index-ignores-gpu-health",
        ),
        pytest.param({}, _open_circuit, 0.0, "circuit open", id="circuit-open"),
        pytest.param({}, _open_circuit, 60.0, None, id="circuit-half-open-may-probe"),
        pytest.param({}, _probe_out, 60.0, "circuit half-open, probe out", id="circuit-probe-out"),
        pytest.param(
            {},
            lambda p: p.held.update({("box-a", "cuda:0"): "rx"}),
            0.0,
            "GPU held exclusively for request rx",
            id="device-held",
        ),
        pytest.param(
            {},
            lambda p: p.reserved.update({("box-a", "cuda:0"): "ry"}),
            0.0,
            "GPU held exclusively for request ry",
            id="device-reserved",
        ),
        pytest.param(
            {},
            lambda p: p.held.update({("box-b", "cuda:0"): "rx"}),
            0.0,
            None,
            id="same-device-other-host-held",
        ),
        pytest.param(
            {"exclusive_request": "rz"}, None, 0.0, "GPU held exclusively for request rz", id="worker-reports-exclusive"
        ),
        pytest.param(
            {"state": WorkerState.DRAINING},
            lambda p: p.on_inventory(make_inventory((make_gpu(0, healthy=False),))),
            0.0,
            "draining",
            id="state-before-gpu-health",
        ),
        pytest.param(
            {"exclusive_request": "rz"},
            _open_circuit,
            0.0,
            "circuit open",
            id="circuit-before-exclusive",
        ),
    ],
)
def test_why_not(status_kw: dict[str, object], setup: Setup | None, now: float, reason: str | None) -> None:
    settings = {"worker_timeout_s": 100.0} if now >= 60 else {}  # keep circuit cases alive
    pools = pools_of(make_worker_status(**status_kw), **settings)  # type: ignore[arg-type]
    if setup is not None:
        setup(pools)
    assert pools.why_not(record(pools), now) == reason


# --------------------------------------------------------------------------- on_inventory


def test_inventory_changes_in_words() -> None:
    pools = Pools()
    assert pools.on_inventory(make_inventory()) == []
    sick = make_inventory((make_gpu(0, healthy=False, health_reason="Xid 79"), make_gpu(1)))
    assert pools.on_inventory(sick) == ["box-a cuda:0 is unhealthy (Xid 79)"]
    assert pools.on_inventory(sick) == []
    assert pools.on_inventory(make_inventory()) == ["box-a cuda:0 is healthy again"]
    assert pools.on_inventory(make_inventory((make_gpu(1),))) == ["box-a cuda:0 disappeared"]
    assert pools.gpu_health[("box-a", 0)] == (False, "the detector no longer sees it")
    assert pools.on_inventory(make_inventory()) == ["box-a cuda:0 is healthy again"]


def test_inventory_first_sight_of_an_unhealthy_gpu_is_a_change() -> None:
    pools = Pools()
    assert pools.on_inventory(make_inventory((make_gpu(3, healthy=False),), host="box-b")) == [
        "box-b cuda:3 is unhealthy"
    ]


def test_inventory_of_another_host_leaves_this_one_alone() -> None:
    pools = Pools()
    pools.on_inventory(make_inventory(host="box-a"))
    assert pools.on_inventory(make_inventory((), host="box-b")) == []
    assert pools.gpu_health[("box-a", 0)] == (True, None)


def test_gpu_that_comes_back_serves_again() -> None:
    pools = pools_of(make_worker_status(device="cuda:1"))
    pools.on_inventory(make_inventory())
    pools.on_inventory(make_inventory((make_gpu(0),)))
    assert pools.why_not(record(pools), 0.0) is not None
    pools.on_inventory(make_inventory())
    assert pools.why_not(record(pools), 0.0) is None


def test_disappeared_gpu_is_reported_once() -> None:
    pools = Pools()
    pools.on_inventory(make_inventory())
    assert pools.on_inventory(make_inventory((make_gpu(0),), sequence=2)) == ["box-a cuda:1 disappeared"]
    assert pools.on_inventory(make_inventory((make_gpu(0),), sequence=3)) == []


# --------------------------------------------------------------------------- serves / room / load


@pytest.mark.parametrize(
    ("status_kw", "model", "group", "serves"),
    [
        pytest.param({"models": ("m1", "m2")}, "m2", "g", True, id="model-listed"),
        pytest.param({"models": (), "groups": ("g",)}, "m9", "g", True, id="group-loaded"),
        pytest.param({"models": ("m1",), "groups": ("h",)}, "m9", "g", False, id="neither"),
        pytest.param({"models": ("m1",), "cpu_cached_groups": ("g",)}, "m9", "g", False, id="cpu-cache-is-not-enough"),
    ],
)
def test_serves(status_kw: dict[str, object], model: str, group: str, serves: bool) -> None:
    pools = pools_of(make_worker_status(**status_kw))  # type: ignore[arg-type]
    assert pools.serves(record(pools), make_placement_request(model, group=group)) is serves


@pytest.mark.parametrize(
    ("slots", "in_flight", "queue_depth", "limit", "room"),
    [
        pytest.param(1, 0, 0, 8, True, id="idle"),
        pytest.param(1, 1, 7, 8, True, id="one-below-limit"),
        pytest.param(1, 1, 8, 8, False, id="at-limit"),
        pytest.param(4, 4, 7, 8, True, id="slots-count"),
        pytest.param(4, 4, 8, 8, False, id="slots-count-full"),
        pytest.param(2, 1, 0, 0, True, id="no-queue-free-slot"),
        pytest.param(2, 2, 0, 0, False, id="no-queue-slots-busy"),
    ],
)
def test_room(slots: int, in_flight: int, queue_depth: int, limit: int, room: bool) -> None:
    status = make_worker_status(slots=slots, in_flight=in_flight, queue_depth=queue_depth, request_count=10)
    pools = pools_of(status, worker_queue_limit=limit)
    assert pools.room(record(pools)) is room


def test_a_worker_that_measured_nothing_yet_gets_no_queue() -> None:
    """Its speed is unknown until its first answer: a burst must not bury it."""
    pools = pools_of(make_worker_status(slots=2, in_flight=1), worker_queue_limit=8)
    assert pools.room(record(pools))
    pools.on_sent("w0", 0.0)
    assert not pools.room(record(pools))
    pools.on_status(make_worker_status(slots=2, in_flight=2, request_count=1, latency_avg_s=1.9, sequence=2), 1.0)
    assert pools.room(record(pools))


def test_room_counts_what_this_router_sent() -> None:
    pools = pools_of(make_worker_status(slots=1, in_flight=1, request_count=3), worker_queue_limit=1)
    assert pools.room(record(pools))
    pools.on_sent("w0", 0.0)
    assert not pools.room(record(pools))


def test_load_is_reported_plus_sent_since_status() -> None:
    pools = pools_of(make_worker_status(in_flight=2, queue_depth=3, sequence=1))
    rec = record(pools)
    assert rec.load() == 5
    pools.on_sent("w0", 0.1)
    pools.on_sent("w0", 0.2)
    assert (rec.load(), rec.sent_since_status, rec.outstanding) == (7, 2, 2)
    pools.on_status(make_worker_status(in_flight=4, queue_depth=3, sequence=2), 0.3)
    assert (rec.load(), rec.sent_since_status, rec.outstanding) == (7, 0, 2)
    pools.on_done("w0", 0.4, ok=True)
    assert (rec.load(), rec.sent_since_status, rec.outstanding) == (7, 0, 1)


def test_load_is_at_least_what_is_outstanding() -> None:
    pools = pools_of(make_worker_status(sequence=1))
    for t in range(3):
        pools.on_sent("w0", float(t))
    pools.on_status(make_worker_status(sequence=2, in_flight=0), 3.0)  # a status from before they arrived
    rec = record(pools)
    assert (rec.load(), rec.outstanding) == (3, 3)
    pools.on_done("w0", 4.0, ok=True)
    assert rec.load() == 2


def test_on_done_never_goes_negative() -> None:
    pools = pools_of(make_worker_status(in_flight=1))
    pools.on_done("w0", 0.0, ok=True)
    rec = record(pools)
    assert (rec.outstanding, rec.sent_since_status, rec.load()) == (0, 0, 1)


def test_snapshot_carries_what_policies_need() -> None:
    status = make_worker_status(
        "w7",
        device="cuda:2",
        host="box-c",
        slots=3,
        in_flight=2,
        queue_depth=1,
        groups=("g1", "g2"),
        cpu_cached_groups=("g3",),
        latency_avg_s=0.25,
        error_count=1,
        request_count=4,
    )
    pools = pools_of(status, worker_queue_limit=1)
    pools.on_sent("w7", 0.0)
    snap = pools.snapshot(record(pools, "w7"))
    assert (snap.worker_id, snap.host, snap.device, snap.slots, snap.load) == ("w7", "box-c", "cuda:2", 3, 4)
    assert snap.groups_loaded == frozenset({"g1", "g2"}) and snap.cpu_cached_groups == frozenset({"g3"})
    assert (snap.current_group, snap.latency_avg_s, snap.error_rate, snap.has_room) == ("g1", 0.25, 0.25, False)
    assert not snap.is_cpu


def test_snapshot_error_rate_zero_without_requests() -> None:
    pools = pools_of(make_worker_status(device="cpu"))
    snap = pools.snapshot(record(pools))
    assert snap.error_rate == 0.0 and snap.is_cpu


def test_many_hosts_and_devices() -> None:
    pools = pools_of(
        make_worker_status("a", device="cuda:1"),
        make_worker_status("b", device="cuda:0"),
        make_worker_status("c", device="cuda:0"),
        make_worker_status("cpu", device="cpu", host="box-z"),
    )
    assert pools.many_hosts()
    assert pools.devices() == [("box-a", "cuda:0"), ("box-a", "cuda:1")]
    assert not pools_of(make_worker_status("a"), make_worker_status("b", device="cuda:1")).many_hosts()


# --------------------------------------------------------------------------- on_sent / on_done / circuit


def test_on_done_for_an_unknown_worker() -> None:
    assert Pools().on_done("ghost", 0.0, ok=False) is None


def test_on_done_opens_the_circuit_after_threshold_failures() -> None:
    pools = pools_of(make_worker_status(), failure_threshold=3, reset_s=10.0)
    messages = []
    for t in range(3):
        pools.on_sent("w0", float(t))
        messages.append(pools.on_done("w0", float(t), ok=False))
    assert messages == [None, None, "circuit of w0 opened after 3 failures in a row; probing again in 10 s"]
    assert record(pools).circuit.state(2.0) is CircuitState.OPEN
    assert pools.why_not(record(pools), 2.0) == "circuit open"


def test_client_errors_leave_the_circuit_alone() -> None:
    pools = pools_of(make_worker_status(), failure_threshold=2)
    for t in range(5):
        pools.on_sent("w0", float(t) / 10)
        assert pools.on_done("w0", float(t) / 10, ok=None) is None
    assert record(pools).circuit.failures == 0


def test_success_in_between_resets_the_count() -> None:
    pools = pools_of(make_worker_status(), failure_threshold=2)
    outcomes = [False, True, False, True, False]
    assert [pools.on_done("w0", 0.0, ok=ok) for ok in outcomes] == [None] * 5
    assert pools.why_not(record(pools), 0.0) is None


def test_probe_cycle_through_pools() -> None:
    pools = pools_of(make_worker_status(), failure_threshold=1, reset_s=10.0, worker_timeout_s=1000.0)
    pools.on_sent("w0", 0.0)
    assert pools.on_done("w0", 0.0, ok=False) == "circuit of w0 opened after 1 failures in a row; probing again in 10 s"
    assert pools.why_not(record(pools), 9.9) == "circuit open"
    assert pools.why_not(record(pools), 10.0) is None
    pools.on_sent("w0", 10.0)  # the probe
    assert pools.why_not(record(pools), 10.0) == "circuit half-open, probe out"
    assert pools.on_done("w0", 11.0, ok=False) is not None  # the probe failed: open again from 11
    assert pools.why_not(record(pools), 20.5) == "circuit open"
    assert pools.why_not(record(pools), 21.0) is None
    pools.on_sent("w0", 21.0)
    assert pools.on_done("w0", 21.5, ok=True) == "circuit of w0 closed again"
    assert pools.why_not(record(pools), 21.5) is None
    assert pools.on_done("w0", 22.0, ok=True) is None


def test_probe_answered_with_a_client_error_does_not_block_the_worker_forever() -> None:
    pools = pools_of(make_worker_status(), failure_threshold=1, reset_s=10.0, worker_timeout_s=10_000.0)
    pools.on_sent("w0", 0.0)
    pools.on_done("w0", 0.0, ok=False)
    pools.on_sent("w0", 10.0)  # the probe
    pools.on_done("w0", 11.0, ok=None)  # the worker answered: the client's request was bad
    # An hour later the worker still gets nothing: no probe is out, yet none may be sent.
    assert pools.why_not(record(pools), 3600.0) is None


# --------------------------------------------------------------------------- expired


@pytest.mark.parametrize(
    ("status_kw", "outstanding", "now", "lost", "forgotten"),
    [
        pytest.param({}, 1, 1.0, False, False, id="alive-with-work"),
        pytest.param({}, 0, 10.0, False, False, id="silent-without-work"),
        pytest.param({}, 2, 10.0, True, False, id="silent-with-work"),
        pytest.param({"state": WorkerState.STOPPED}, 1, 0.0, True, False, id="stopped-with-work"),
        pytest.param({"state": WorkerState.STOPPED}, 0, 0.0, False, False, id="stopped-without-work"),
        pytest.param({}, 0, 300.0, False, False, id="at-forget-limit-kept"),
        pytest.param({}, 0, 301.0, False, True, id="very-old-forgotten"),
        pytest.param({}, 1, 301.0, True, True, id="very-old-with-work-lost-and-forgotten"),
    ],
)
def test_expired(status_kw: dict[str, object], outstanding: int, now: float, lost: bool, forgotten: bool) -> None:
    pools = pools_of(make_worker_status(**status_kw), make_worker_status("other", device="cuda:1"))  # type: ignore[arg-type]
    for _ in range(outstanding):
        pools.on_sent("w0", 0.0)
    pools.on_status(make_worker_status("other", device="cuda:1", sequence=2), now)  # stays fresh
    assert pools.expired(now) == (["w0"] if lost else [])
    assert ("w0" not in pools.workers) is forgotten
    assert "other" in pools.workers


def test_expired_keeps_reporting_until_the_tasks_are_settled() -> None:
    pools = pools_of(make_worker_status())
    pools.on_sent("w0", 0.0)
    assert pools.expired(5.0) == ["w0"]
    assert pools.expired(6.0) == ["w0"]
    pools.on_done("w0", 6.0, ok=False)
    assert pools.expired(7.0) == []
