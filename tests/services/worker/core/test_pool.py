from __future__ import annotations

import pytest

from services.worker.core.pool import Pool
from shared.contracts import Priority

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW


def test_priority_then_fifo() -> None:
    pool = Pool(1)
    blocker = pool.submit(NORMAL, now=0)
    assert pool.start_ready(0) == [blocker]
    names = {}
    for name, priority in [("low", LOW), ("n1", NORMAL), ("high", HIGH), ("n2", NORMAL), ("high2", HIGH)]:
        names[pool.submit(priority, now=0)] = name
    order = []
    running = blocker
    for _ in range(5):
        pool.finish(running, 1, ok=True)
        [running] = pool.start_ready(1)
        order.append(names[running])
    assert order == ["high", "high2", "n1", "n2", "low"]


def test_slots_bound_what_runs() -> None:
    pool = Pool(3)
    tickets = [pool.submit(NORMAL, now=0) for _ in range(5)]
    assert pool.start_ready(0) == tickets[:3]
    assert (pool.in_flight, pool.queue_depth) == (3, 2)
    assert pool.start_ready(0) == []
    pool.finish(tickets[1], 1, ok=True)
    assert pool.start_ready(1) == [tickets[3]]
    assert (pool.in_flight, pool.queue_depth) == (3, 1)


def test_exclusive_waits_for_nothing_running_and_holds_those_behind() -> None:
    pool = Pool(3)
    a, b = pool.submit(NORMAL, now=0), pool.submit(NORMAL, now=0)
    assert pool.start_ready(0) == [a, b]
    x = pool.submit(NORMAL, now=0, exclusive=True, label="req-x")
    behind = pool.submit(NORMAL, now=0)
    assert pool.start_ready(0) == []  # a free slot, but the exclusive one is first in line
    pool.finish(a, 1, ok=True)
    assert pool.start_ready(1) == []
    pool.finish(b, 2, ok=True)
    assert pool.start_ready(2) == [x]
    assert pool.exclusive_label == "req-x"
    later_high = pool.submit(HIGH, now=2)
    assert pool.start_ready(2) == []  # nothing starts beside an exclusive one
    pool.finish(x, 3, ok=True)
    assert pool.exclusive_label is None
    assert pool.start_ready(3) == [later_high, behind]


def test_exclusive_starts_at_once_on_an_idle_pool_and_alone() -> None:
    pool = Pool(2)
    x = pool.submit(LOW, now=0, exclusive=True)
    y = pool.submit(LOW, now=0)
    assert pool.start_ready(0) == [x]
    pool.finish(x, 1, ok=True)
    assert pool.start_ready(1) == [y]


def test_counters_count_requests_and_errors() -> None:
    pool = Pool(2)
    batch = pool.submit(NORMAL, now=0, requests=3)
    single = pool.submit(NORMAL, now=0)
    pool.start_ready(0)
    pool.finish(batch, 1, ok=True, service_s=0.5, loaded_group=True)
    pool.finish(single, 1, ok=False)
    assert (pool.request_count, pool.error_count, pool.group_switches) == (4, 1, 1)
    assert pool.idle


def test_latency_is_a_moving_average_of_successes() -> None:
    pool = Pool(1, latency_alpha=0.5)
    for service_s, ok in [(1.0, True), (3.0, True), (100.0, False), (None, True)]:
        ticket = pool.submit(NORMAL, now=0)
        pool.start_ready(0)
        pool.finish(ticket, 0, ok=ok, service_s=service_s)
    assert pool.latency_avg_s == pytest.approx(2.0)


def test_utilization_is_the_busy_fraction_since_the_last_status() -> None:
    pool = Pool(2, now=0)
    a = pool.submit(NORMAL, now=1)
    pool.start_ready(1)
    b = pool.submit(NORMAL, now=2)
    pool.start_ready(2)  # two running counts once: the device is busy or not
    pool.finish(a, 2.5, ok=True)
    pool.finish(b, 3, ok=True)
    assert pool.take_utilization(4) == pytest.approx(50.0)
    assert pool.take_utilization(6) == 0.0
    c = pool.submit(NORMAL, now=6)
    pool.start_ready(7)
    assert pool.take_utilization(8) == pytest.approx(50.0)
    assert pool.take_utilization(10) == pytest.approx(100.0)  # still running
    assert pool.take_utilization(10) == 100.0  # an empty window reports what runs now
    pool.finish(c, 10, ok=True)


def test_withdraw_and_cancel_forget_without_counting() -> None:
    pool = Pool(1)
    a, b = pool.submit(NORMAL, now=0), pool.submit(NORMAL, now=0)
    pool.start_ready(0)
    assert pool.withdraw(b) and not pool.withdraw(b)
    pool.cancel(a, 1)
    assert pool.idle and pool.request_count == 0 and pool.start_ready(1) == []


def test_a_pool_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        Pool(0)
