"""A circuit breaker per worker: open after consecutive failures, one probe after a cool-down."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Closed → (``failure_threshold`` failures in a row) → open → (``reset_s`` later) → half-open:
    one probe request; its success closes the circuit, its failure opens it again. Times are the
    caller's clock (seconds, monotonic)."""

    failure_threshold: int = 5
    reset_s: float = 60.0
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    def state(self, now: float) -> CircuitState:
        if self.opened_at is None:
            return CircuitState.CLOSED
        if now - self.opened_at >= self.reset_s:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def allows(self, now: float) -> bool:
        """May a request go to this worker now? In half-open, only while no probe is out."""
        state = self.state(now)
        return state is CircuitState.CLOSED or (state is CircuitState.HALF_OPEN and not self.probing)

    def on_dispatch(self, now: float) -> None:
        if self.state(now) is CircuitState.HALF_OPEN:
            self.probing = True

    def on_success(self) -> bool:
        """Record a success; True when it closed an open circuit."""
        closed = self.opened_at is not None
        self.failures = 0
        self.opened_at = None
        self.probing = False
        return closed

    def on_failure(self, now: float) -> bool:
        """Record a failure; True when it opened the circuit (or re-opened it after a failed probe)."""
        self.failures += 1
        was_probe = self.probing
        self.probing = False
        if was_probe or (self.opened_at is None and self.failures >= self.failure_threshold):
            self.opened_at = now
            return True
        return False
