"""Judge whether a recreated container came up: its healthcheck where it has one, else running and
not restarting through a grace period. Time is passed in, never read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from services.orchestrator.core.model import ContainerView

NOT_STARTED = ("created", "configured", "initialized")


@dataclass(frozen=True)
class Verdict:
    state: Literal["waiting", "healthy", "failed"]
    reason: str


def judge(
    container: ContainerView | None,
    *,
    since: datetime,
    now: datetime,
    grace_s: float,
    timeout_s: float,
    restarts_before: int = 0,
) -> Verdict:
    """``since``: when the container was (re)created; ``restarts_before``: its restart count then."""
    waited = (now - since).total_seconds()
    if container is None:
        return Verdict("failed", "its container is gone")
    restarts = container.restart_count
    if container.restarting or restarts > restarts_before:
        return Verdict("failed", f"it keeps restarting ({restarts} restart{'' if restarts == 1 else 's'})")
    if not container.running:
        if container.status in NOT_STARTED and waited < grace_s:
            return Verdict("waiting", "not started yet")
        if container.status in NOT_STARTED:
            return Verdict("failed", f"it was created but not started within {grace_s:g} s")
        if container.status in ("exited", "stopped"):
            code = f" with code {container.exit_code}" if container.exit_code is not None else ""
            return Verdict("failed", f"it exited{code}")
        return Verdict("failed", f"it is {container.status}, not running")
    if container.has_healthcheck:
        if container.health == "healthy":
            return Verdict("healthy", "its healthcheck passes")
        if container.health == "unhealthy":
            return Verdict("failed", "its healthcheck reports unhealthy")
        if waited >= timeout_s:
            return Verdict("failed", f"its healthcheck has not passed after {timeout_s:g} s")
        return Verdict("waiting", "healthcheck starting")
    started = container.started_at or since
    up_for = (now - max(started, since)).total_seconds()
    if up_for >= grace_s:
        return Verdict("healthy", f"running for {grace_s:g} s without a restart (no healthcheck)")
    return Verdict("waiting", "running; watching for a restart")
