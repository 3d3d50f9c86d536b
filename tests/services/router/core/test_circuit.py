"""The per-worker circuit breaker: closed → open after consecutive failures → half-open with one probe."""

from __future__ import annotations

import pytest

from services.router.core.circuit import CircuitBreaker, CircuitState

THRESHOLD = 3
RESET = 10.0


def breaker() -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=THRESHOLD, reset_s=RESET)


def replay(cb: CircuitBreaker, events: str, start: float = 0.0) -> list[bool]:
    """``f`` a failure, ``s`` a success, one a second; returns what each call returned."""
    out = []
    for i, event in enumerate(events):
        out.append(cb.on_failure(start + i) if event == "f" else cb.on_success())
    return out


def test_defaults() -> None:
    cb = CircuitBreaker()
    assert (cb.failure_threshold, cb.reset_s) == (5, 60.0)
    assert cb.state(0.0) is CircuitState.CLOSED and cb.allows(0.0)


@pytest.mark.parametrize(
    ("events", "returns", "state"),
    [
        pytest.param("", [], CircuitState.CLOSED, id="fresh"),
        pytest.param("ff", [False, False], CircuitState.CLOSED, id="below-threshold"),
        pytest.param("fff", [False, False, True], CircuitState.OPEN, id="threshold-opens"),
        pytest.param("ffsff", [False, False, False, False, False], CircuitState.CLOSED, id="success-resets-count"),
        pytest.param("ffsfff", [False, False, False, False, False, True], CircuitState.OPEN, id="count-again"),
        pytest.param("ffff", [False, False, True, False], CircuitState.OPEN, id="more-failures-while-open"),
        pytest.param("fffs", [False, False, True, True], CircuitState.CLOSED, id="late-success-closes"),
        pytest.param("ss", [False, False], CircuitState.CLOSED, id="success-when-closed-reports-nothing"),
    ],
)
def test_failures_in_a_row(events: str, returns: list[bool], state: CircuitState) -> None:
    cb = breaker()
    assert replay(cb, events) == returns
    assert cb.state(len(events)) is state
    assert cb.allows(len(events)) is (state is CircuitState.CLOSED)


def test_failures_while_open_keep_opened_at() -> None:
    cb = breaker()
    replay(cb, "fff")
    assert cb.opened_at == 2.0
    assert cb.on_failure(5.0) is False
    assert cb.opened_at == 2.0
    assert cb.failures == 4


@pytest.mark.parametrize(
    ("now", "state", "allows"),
    [
        pytest.param(0.0, CircuitState.OPEN, False, id="just-opened"),
        pytest.param(RESET - 0.001, CircuitState.OPEN, False, id="before-reset"),
        pytest.param(RESET, CircuitState.HALF_OPEN, True, id="at-reset"),
        pytest.param(RESET * 100, CircuitState.HALF_OPEN, True, id="long-after"),
    ],
)
def test_half_open_after_reset(now: float, state: CircuitState, allows: bool) -> None:
    cb = breaker()
    for _ in range(THRESHOLD):
        cb.on_failure(0.0)
    assert cb.state(now) is state
    assert cb.allows(now) is allows


def opened_at_zero() -> CircuitBreaker:
    cb = breaker()
    for _ in range(THRESHOLD):
        cb.on_failure(0.0)
    return cb


def test_half_open_allows_exactly_one_probe() -> None:
    cb = opened_at_zero()
    assert cb.allows(RESET)
    cb.on_dispatch(RESET)
    assert cb.probing
    assert cb.state(RESET) is CircuitState.HALF_OPEN
    assert not cb.allows(RESET)
    assert not cb.allows(RESET + 1000)


def test_dispatch_while_closed_or_open_is_no_probe() -> None:
    cb = breaker()
    cb.on_dispatch(0.0)
    assert not cb.probing
    cb = opened_at_zero()
    cb.on_dispatch(1.0)
    assert not cb.probing


def test_probe_success_closes() -> None:
    cb = opened_at_zero()
    cb.on_dispatch(RESET)
    assert cb.on_success() is True
    assert (cb.failures, cb.opened_at, cb.probing) == (0, None, False)
    assert cb.state(RESET) is CircuitState.CLOSED and cb.allows(RESET)


def test_probe_failure_reopens_with_new_opened_at() -> None:
    cb = opened_at_zero()
    cb.on_dispatch(RESET + 5)
    assert cb.on_failure(RESET + 7) is True
    assert cb.opened_at == RESET + 7
    assert not cb.probing
    assert cb.state(RESET + 7) is CircuitState.OPEN
    assert cb.state(2 * RESET + 7 - 0.001) is CircuitState.OPEN
    assert cb.state(2 * RESET + 7) is CircuitState.HALF_OPEN
    assert cb.allows(2 * RESET + 7)


def test_failure_in_half_open_without_a_probe_changes_nothing() -> None:
    cb = opened_at_zero()
    assert cb.on_failure(RESET + 1) is False  # an answer to a request sent before the circuit opened
    assert cb.opened_at == 0.0
    assert cb.allows(RESET + 1)


def test_a_full_cycle() -> None:
    cb = breaker()
    assert replay(cb, "fff") == [False, False, True]  # opens at t=2
    assert not cb.allows(3.0)
    cb.on_dispatch(12.0)  # the probe
    assert cb.on_failure(13.0)  # fails: open again from 13
    assert not cb.allows(22.0)
    cb.on_dispatch(23.0)
    assert cb.on_success()
    assert replay(cb, "ff", start=30.0) == [False, False]
    assert cb.state(40.0) is CircuitState.CLOSED
