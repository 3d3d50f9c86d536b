"""The supervisor with real child processes."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.stack.supervisor import Backoff, ProcessSpec, Supervisor, popen_identity
from shared.errors import ProcessStartError
from tests.realdeps import pids_alive


@pytest.mark.parametrize(
    "previous,uptime,expected",
    [
        (None, 0.1, 0.5),      # first crash
        (0.5, 0.1, 1.0),       # quick crash again: doubles
        (16.0, 0.1, 30.0),     # capped
        (16.0, 31.0, 0.5),     # stayed up long enough: reset
    ],
)
def test_backoff(previous: float | None, uptime: float, expected: float) -> None:
    assert Backoff(initial_s=0.5, max_s=30, reset_after_s=30).delay(previous, uptime) == expected


def sleeper(name: str, *, crash_after_s: float | None = None) -> ProcessSpec:
    code = (
        f"import time; time.sleep({crash_after_s}); raise SystemExit(3)"
        if crash_after_s is not None
        else "import time; time.sleep(600)"
    )
    return ProcessSpec(name=name, argv=[sys.executable, "-c", code], stop_timeout_s=2)


async def test_crashed_child_is_restarted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gpuplane.supervisor")
    seen: list[dict[str, int]] = []
    sup = Supervisor(Backoff(initial_s=0.1, max_s=0.2), on_change=seen.append)
    try:
        child = await sup.start(sleeper("crasher", crash_after_s=0.2))
        first_pid = child.pid
        for _ in range(100):
            if len({s["crasher"] for s in seen}) >= 3:
                break
            await asyncio.sleep(0.05)
        assert child.restarts >= 2
        assert child.pid != first_pid
        assert "crasher (pid" in caplog.text and "exited with code 3" in caplog.text and "restart #1" in caplog.text
        assert len({s["crasher"] for s in seen}) >= 3
    finally:
        await sup.stop_all()


async def test_stop_all_leaves_no_process_including_grandchildren() -> None:
    sup = Supervisor(Backoff())
    # The child starts a grandchild in its own process group; both must go.
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(p.pid, flush=True); time.sleep(600)"
    )
    import tempfile

    out = Path(tempfile.mkdtemp()) / "out.log"
    child = await sup.start(
        ProcessSpec(name="parent", argv=[sys.executable, "-c", code], log_file=out, stop_timeout_s=1)
    )
    for _ in range(100):
        if out.exists() and out.read_text().strip():
            break
        await asyncio.sleep(0.05)
    grandchild = int(out.read_text().split()[0])
    parent = child.pid
    assert parent is not None
    assert pids_alive([parent, grandchild]) == [parent, grandchild]
    await sup.stop_all()
    await asyncio.sleep(0.2)
    assert pids_alive([parent, grandchild]) == []


async def test_child_that_dies_while_starting_is_a_clear_error() -> None:
    sup = Supervisor(Backoff())

    async def never_ready() -> bool:
        return False

    spec = ProcessSpec(
        name="dies", argv=[sys.executable, "-c", "raise SystemExit(7)"], ready=never_ready, ready_timeout_s=5
    )
    try:
        with pytest.raises(ProcessStartError, match="dies exited with code 7 while starting"):
            await sup.start(spec)
    finally:
        await sup.stop_all()


def test_children_die_with_a_sigkilled_supervisor(tmp_path: Path) -> None:
    """The parent-death signal: even `kill -9` of the supervisor leaves no child behind."""
    pid_file = tmp_path / "child.pid"
    script = f"""
import asyncio, sys
from services.stack.supervisor import Backoff, ProcessSpec, Supervisor

async def main():
    sup = Supervisor(Backoff(), on_change=lambda pids: open({str(pid_file)!r}, "w").write(str(pids["child"])))
    await sup.start(ProcessSpec(name="child", argv=[sys.executable, "-c", "import time; time.sleep(600)"]))
    await asyncio.sleep(600)

asyncio.run(main())
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[3])
    try:
        for _ in range(100):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert pids_alive([child]) == [child]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for _ in range(100):
            if not pids_alive([child]):
                break
            time.sleep(0.05)
        assert pids_alive([child]) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_popen_identity_names_the_missing_user() -> None:
    assert popen_identity(None) == {}
    with pytest.raises(ProcessStartError, match="no-such-gpuplane-user: no such system user"):
        popen_identity("no-such-gpuplane-user")


def _status_ids(text: str, key: str) -> list[int]:
    line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
    return [int(v) for v in line.split()[1:]]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run a child as another user")
async def test_a_child_run_as_another_user_keeps_none_of_roots_groups(tmp_path: Path) -> None:
    """``user=`` alone would leave gid 0 and root's supplementary groups to the child."""
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    out = tmp_path / "status.log"
    sup = Supervisor(Backoff(initial_s=30))
    try:
        await sup.start(
            ProcessSpec(name="status", argv=["cat", "/proc/self/status"], user="nobody", log_file=out)
        )
        for _ in range(100):
            if out.exists() and "Groups:" in out.read_text():
                break
            await asyncio.sleep(0.05)
    finally:
        await sup.stop_all()
    status = out.read_text()
    assert set(_status_ids(status, "Uid")) == {entry.pw_uid}
    assert set(_status_ids(status, "Gid")) == {entry.pw_gid}
    assert _status_ids(status, "Groups") == []
