"""The router's bounded priority queue and the Retry-After figure."""

from __future__ import annotations

import pytest

from services.router.core.queue import ORDER, PriorityQueue, QueueFull, retry_after_s
from shared.contracts import Priority

H, N, L = Priority.HIGH, Priority.NORMAL, Priority.LOW


def items(q: PriorityQueue[str]) -> list[str]:
    return [e.item for e in q]


def test_order_constant() -> None:
    assert ORDER == (H, N, L)


@pytest.mark.parametrize(
    ("pushes", "expected"),
    [
        pytest.param([], [], id="empty"),
        pytest.param([("a", N), ("b", N), ("c", N)], ["a", "b", "c"], id="fifo-within"),
        pytest.param([("l", L), ("n", N), ("h", H)], ["h", "n", "l"], id="priority-order"),
        pytest.param(
            [("l1", L), ("n1", N), ("h1", H), ("l2", L), ("h2", H), ("n2", N)],
            ["h1", "h2", "n1", "n2", "l1", "l2"],
            id="interleaved",
        ),
    ],
)
def test_serving_order(pushes: list[tuple[str, Priority]], expected: list[str]) -> None:
    q: PriorityQueue[str] = PriorityQueue(limit=10)
    for t, (item, prio) in enumerate(pushes):
        q.push(item, prio, float(t))
    assert items(q) == expected
    assert len(q) == len(expected)


def test_entries_record_time_and_sequence() -> None:
    q: PriorityQueue[str] = PriorityQueue(limit=10)
    a = q.push("a", L, 1.5)
    b = q.push("b", H, 2.5)
    assert (a.item, a.priority, a.enqueued_at) == ("a", L, 1.5)
    assert b.seq > a.seq


@pytest.mark.parametrize("limit", [1, 3])
def test_bounded_across_priorities(limit: int) -> None:
    q: PriorityQueue[str] = PriorityQueue(limit=limit)
    for i in range(limit):
        q.push(f"x{i}", ORDER[i % 3], 0.0)
    for prio in ORDER:
        with pytest.raises(QueueFull) as info:
            q.push("over", prio, 0.0)
        assert str(info.value) == f"{limit} requests are queued already (limit {limit})"
    assert len(q) == limit


def test_zero_limit_refuses_everything_but_front() -> None:
    q: PriorityQueue[str] = PriorityQueue(limit=0)
    with pytest.raises(QueueFull):
        q.push("a", N, 0.0)
    q.push("retry", N, 0.0, front=True)
    assert items(q) == ["retry"]


def test_front_insertion_for_retries_ignores_limit() -> None:
    q: PriorityQueue[str] = PriorityQueue(limit=3)
    q.push("h1", H, 0.0)
    q.push("n1", N, 0.0)
    q.push("n2", N, 0.0)
    q.push("retry", N, 1.0, front=True)
    q.push("retry2", L, 1.0, front=True)
    assert items(q) == ["h1", "retry", "n1", "n2", "retry2"]
    assert len(q) == 5
    with pytest.raises(QueueFull, match="5 requests are queued already"):
        q.push("x", H, 2.0)


def test_depths() -> None:
    q: PriorityQueue[str] = PriorityQueue(limit=10)
    assert q.depths() == {"high": 0, "normal": 0, "low": 0}
    assert list(q.depths()) == ["high", "normal", "low"]
    for item, prio in [("a", L), ("b", L), ("c", H), ("d", N), ("e", L)]:
        q.push(item, prio, 0.0)
    assert q.depths() == {"high": 1, "normal": 1, "low": 3}


def test_remove() -> None:
    q: PriorityQueue[str] = PriorityQueue(limit=3)
    a = q.push("a", N, 0.0)
    b = q.push("b", N, 0.0)
    c = q.push("c", L, 0.0)
    q.remove(b)
    assert items(q) == ["a", "c"]
    q.remove(c)
    assert q.depths() == {"high": 0, "normal": 1, "low": 0}
    q.push("d", H, 0.0)
    q.push("e", H, 0.0)  # room again after removals
    assert items(q) == ["d", "e", "a"]
    q.remove(a)
    with pytest.raises(ValueError):
        q.remove(a)


def test_remove_while_iterating() -> None:
    q: PriorityQueue[str] = PriorityQueue(limit=10)
    for item in "abc":
        q.push(item, N, 0.0)
    seen = []
    for entry in q:
        seen.append(entry.item)
        q.remove(entry)
    assert seen == ["a", "b", "c"]
    assert len(q) == 0


@pytest.mark.parametrize(
    ("queued", "slots", "latency", "expected"),
    [
        pytest.param(0, 1, 0.5, 1.0, id="empty-floor"),
        pytest.param(1, 1, 0.5, 1.0, id="short-floor"),
        pytest.param(10, 1, 0.5, 5.0, id="one-slot"),
        pytest.param(10, 2, 0.5, 2.5, id="two-slots"),
        pytest.param(10, 0, 0.5, 5.0, id="no-slots-counts-as-one"),
        pytest.param(1000, 1, 0.0, 10.0, id="unknown-latency-floor-10ms"),
        pytest.param(300, 4, 0.001, 1.0, id="tiny-latency-floored"),
        pytest.param(30, 3, 2.0, 20.0, id="slow"),
    ],
)
def test_retry_after_s(queued: int, slots: int, latency: float, expected: float) -> None:
    assert retry_after_s(queued, slots, latency) == pytest.approx(expected)
