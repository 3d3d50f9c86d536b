"""Judging whether a recreated container came up, with time passed in: ``since`` is T0, ``now`` varies."""

from __future__ import annotations

import pytest

from services.orchestrator.core.health import Verdict, judge
from services.orchestrator.core.model import ContainerView
from tests.services.orchestrator.core.builders import T0, at, make_container

GRACE_S = 30.0
TIMEOUT_S = 120.0


def exited(code: int | None, status: str = "exited") -> ContainerView:
    return make_container(status=status, exit_code=code)


@pytest.mark.parametrize(
    ("container", "now_s", "restarts_before", "expected"),
    [
        # gone
        pytest.param(None, 0, 0, Verdict("failed", "its container is gone"), id="gone-at-once"),
        pytest.param(None, 500, 0, Verdict("failed", "its container is gone"), id="gone-later"),
        # created but not started
        pytest.param(
            make_container(status="created"), 0, 0, Verdict("waiting", "not started yet"), id="created-at-once"
        ),
        pytest.param(
            make_container(status="created"), 29.9, 0, Verdict("waiting", "not started yet"), id="created-within-grace"
        ),
        pytest.param(
            make_container(status="configured"), 10, 0, Verdict("waiting", "not started yet"), id="podman-configured"
        ),
        pytest.param(
            make_container(status="initialized"), 10, 0, Verdict("waiting", "not started yet"), id="podman-initialized"
        ),
        pytest.param(
            make_container(status="created"),
            30,
            0,
            Verdict("failed", "it was created but not started within 30 s"),
            id="created-at-grace",
        ),
        pytest.param(
            make_container(status="created"),
            300,
            0,
            Verdict("failed", "it was created but not started within 30 s"),
            id="created-after-grace",
        ),
        # exited
        pytest.param(exited(1), 1, 0, Verdict("failed", "it exited with code 1"), id="exited-1-within-grace"),
        pytest.param(exited(137), 60, 0, Verdict("failed", "it exited with code 137"), id="exited-137"),
        pytest.param(exited(0), 1, 0, Verdict("failed", "it exited with code 0"), id="exited-0-is-still-a-failure"),
        pytest.param(exited(None), 1, 0, Verdict("failed", "it exited"), id="exited-without-code"),
        pytest.param(exited(None, "dead"), 1, 0, Verdict("failed", "it is dead, not running"), id="dead"),
        pytest.param(
            make_container(status="paused", running=False),
            1,
            0,
            Verdict("failed", "it is paused, not running"),
            id="paused-not-running",
        ),
        # restarting
        pytest.param(
            make_container(status="restarting", running=True, restarting=True, restart_count=3),
            1,
            3,
            Verdict("failed", "it keeps restarting (3 restarts)"),
            id="restarting",
        ),
        pytest.param(
            make_container(restart_count=2),
            1,
            1,
            Verdict("failed", "it keeps restarting (2 restarts)"),
            id="restart-count-increased",
        ),
        pytest.param(
            make_container(restart_count=2, health="healthy"),
            1,
            1,
            Verdict("failed", "it keeps restarting (2 restarts)"),
            id="restart-beats-healthy-healthcheck",
        ),
        pytest.param(
            make_container(status="exited", exit_code=1, restart_count=1),
            1,
            0,
            Verdict("failed", "it keeps restarting (1 restart)"),
            id="restart-reported-before-exit",
        ),
        pytest.param(
            make_container(restart_count=4, health="healthy"),
            1,
            4,
            Verdict("healthy", "its healthcheck passes"),
            id="restart-count-unchanged",
        ),
        # healthcheck
        pytest.param(
            make_container(health="healthy"), 1, 0, Verdict("healthy", "its healthcheck passes"), id="healthy-early"
        ),
        pytest.param(
            make_container(health="healthy"), 500, 0, Verdict("healthy", "its healthcheck passes"), id="healthy-late"
        ),
        pytest.param(
            make_container(health="unhealthy"),
            1,
            0,
            Verdict("failed", "its healthcheck reports unhealthy"),
            id="unhealthy-before-timeout",
        ),
        pytest.param(
            make_container(health="unhealthy"),
            500,
            0,
            Verdict("failed", "its healthcheck reports unhealthy"),
            id="unhealthy-after-timeout",
        ),
        pytest.param(
            make_container(health="starting"), 0, 0, Verdict("waiting", "healthcheck starting"), id="starting-at-once"
        ),
        pytest.param(
            make_container(health="starting", started_at=at(-3600)),
            119.9,
            0,
            Verdict("waiting", "healthcheck starting"),
            id="starting-before-timeout-past-grace",
        ),
        pytest.param(
            make_container(health="starting"),
            120,
            0,
            Verdict("failed", "its healthcheck has not passed after 120 s"),
            id="starting-at-timeout",
        ),
        pytest.param(
            make_container(health="starting"),
            600,
            0,
            Verdict("failed", "its healthcheck has not passed after 120 s"),
            id="starting-after-timeout",
        ),
        # no healthcheck: running through the grace period
        pytest.param(
            make_container(started_at=at(5)),
            30,
            0,
            Verdict("waiting", "running; watching for a restart"),
            id="no-healthcheck-shorter-than-grace",
        ),
        pytest.param(
            make_container(started_at=at(5)),
            35,
            0,
            Verdict("healthy", "running for 30 s without a restart (no healthcheck)"),
            id="no-healthcheck-exactly-grace",
        ),
        pytest.param(
            make_container(started_at=at(5)),
            400,
            0,
            Verdict("healthy", "running for 30 s without a restart (no healthcheck)"),
            id="no-healthcheck-longer-than-grace",
        ),
        pytest.param(
            make_container(started_at=at(-3600)),
            10,
            0,
            Verdict("waiting", "running; watching for a restart"),
            id="started-before-since-counts-from-since",
        ),
        pytest.param(
            make_container(started_at=at(-3600)),
            30,
            0,
            Verdict("healthy", "running for 30 s without a restart (no healthcheck)"),
            id="started-before-since-healthy-after-grace-from-since",
        ),
        pytest.param(
            make_container(started_at=None),
            29,
            0,
            Verdict("waiting", "running; watching for a restart"),
            id="no-start-time-counts-from-since",
        ),
        pytest.param(
            make_container(started_at=None),
            30,
            0,
            Verdict("healthy", "running for 30 s without a restart (no healthcheck)"),
            id="no-start-time-healthy-after-grace",
        ),
    ],
)
def test_judge(container: ContainerView | None, now_s: float, restarts_before: int, expected: Verdict) -> None:
    verdict = judge(
        container, since=T0, now=at(now_s), grace_s=GRACE_S, timeout_s=TIMEOUT_S, restarts_before=restarts_before
    )

    assert verdict == expected


@pytest.mark.parametrize(
    ("grace_s", "timeout_s", "container", "now_s", "expected"),
    [
        pytest.param(
            0.0,
            TIMEOUT_S,
            make_container(started_at=T0),
            0,
            Verdict("healthy", "running for 0 s without a restart (no healthcheck)"),
            id="zero-grace-healthy-at-once",
        ),
        pytest.param(
            0.0,
            TIMEOUT_S,
            make_container(status="created"),
            0,
            Verdict("failed", "it was created but not started within 0 s"),
            id="zero-grace-created",
        ),
        pytest.param(
            7.5,
            TIMEOUT_S,
            make_container(started_at=T0),
            8,
            Verdict("healthy", "running for 7.5 s without a restart (no healthcheck)"),
            id="fractional-grace-in-reason",
        ),
        pytest.param(
            GRACE_S,
            90.5,
            make_container(health="starting"),
            91,
            Verdict("failed", "its healthcheck has not passed after 90.5 s"),
            id="fractional-timeout-in-reason",
        ),
    ],
)
def test_judge_limits(
    grace_s: float, timeout_s: float, container: ContainerView, now_s: float, expected: Verdict
) -> None:
    assert judge(container, since=T0, now=at(now_s), grace_s=grace_s, timeout_s=timeout_s) == expected


def test_judge_defaults_to_no_restarts_before() -> None:
    container = make_container(restart_count=1, health="healthy")

    assert judge(container, since=T0, now=at(1), grace_s=GRACE_S, timeout_s=TIMEOUT_S) == Verdict(
        "failed", "it keeps restarting (1 restart)"
    )
