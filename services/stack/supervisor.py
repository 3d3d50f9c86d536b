"""Start, watch, restart and stop child processes.

Each child runs in its own session so that a terminal's Ctrl-C reaches only the supervisor,
which then stops the children in reverse start order; each child also gets a parent-death
signal, so even a SIGKILLed supervisor leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pwd
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shared.errors import ProcessStartError

log = logging.getLogger("gpuplane.supervisor")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Backoff:
    """Restart delay: doubles per quick crash, resets once a process stayed up ``reset_after_s``."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    reset_after_s: float = 30.0

    def delay(self, previous_delay_s: float | None, uptime_s: float) -> float:
        if previous_delay_s is None or uptime_s >= self.reset_after_s:
            return self.initial_s
        return min(self.max_s, previous_delay_s * self.factor)


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    """Run as this system user and its primary group only (needs root); None: as we are."""
    log_file: Path | None = None
    """Where stdout/stderr go; None: inherit the supervisor's (the terminal)."""
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 10.0
    ready: Callable[[], Awaitable[bool]] | None = None
    ready_timeout_s: float = 60.0


def popen_identity(user: str | None) -> dict[str, Any]:
    """``subprocess``/``asyncio`` keyword arguments that run a child as ``user``, in that user's
    primary group only; ``{}`` for ``None`` or when we already are that (non-root) user.

    ``user=`` alone switches the uid but keeps the parent's groups: started by root, the child
    would keep gid 0 and root's supplementary groups, and with them access to root's files.
    """
    if user is None:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise ProcessStartError(f"cannot run a process as {user}: no such system user") from exc
    if os.geteuid() != 0 and entry.pw_uid == os.geteuid():
        return {}  # nothing to switch, and only root may change its groups
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _child_setup(death_signal: int) -> Callable[[], None]:
    def setup() -> None:
        # Runs in the child after fork (and after any uid switch), before exec.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)

    return setup


class Supervised:
    """One child process, restarted with backoff when it exits unexpectedly."""

    def __init__(self, spec: ProcessSpec, backoff: Backoff, on_start: Callable[[str, int], None]) -> None:
        self.spec = spec
        self._backoff = backoff
        self._on_start = on_start
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._watcher: asyncio.Task[None] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def _spawn(self) -> None:
        out: IO[bytes] | int | None = None
        if self.spec.log_file is not None:
            self.spec.log_file.parent.mkdir(parents=True, exist_ok=True)
            if self._log_handle is None:
                self._log_handle = open(self.spec.log_file, "ab")  # noqa: SIM115, ASYNC230 - once, kept across restarts
            out = self._log_handle
        env = {**os.environ, **self.spec.env}
        self.process = await asyncio.create_subprocess_exec(
            *self.spec.argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=_child_setup(self.spec.stop_signal),
            **popen_identity(self.spec.user),
        )
        self._started_at = time.monotonic()
        self._on_start(self.spec.name, self.process.pid)

    async def start(self) -> None:
        """Start the process, wait until it is ready, then keep it running."""
        await self._spawn()
        if self.spec.ready is not None:
            await self._wait_ready()
        self._watcher = asyncio.create_task(self._watch(), name=f"watch-{self.spec.name}")

    async def _wait_ready(self) -> None:
        assert self.spec.ready is not None and self.process is not None
        deadline = time.monotonic() + self.spec.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                hint = f"; see {self.spec.log_file}" if self.spec.log_file else ""
                raise ProcessStartError(
                    f"{self.spec.name} exited with code {self.process.returncode} while starting{hint}"
                )
            if await self.spec.ready():
                return
            await asyncio.sleep(0.1)
        hint = f"; see {self.spec.log_file}" if self.spec.log_file else ""
        raise ProcessStartError(f"{self.spec.name} not ready after {self.spec.ready_timeout_s:g} s{hint}")

    async def _watch(self) -> None:
        delay: float | None = None
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping:
                return
            uptime = time.monotonic() - self._started_at
            delay = self._backoff.delay(delay, uptime)
            self.restarts += 1
            log.warning(
                "%s (pid %s) exited with code %s after %.1f s; restart #%d in %.1f s",
                self.spec.name,
                self.process.pid,
                code,
                uptime,
                self.restarts,
                delay,
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self._spawn()
            log.info("%s restarted (pid %s)", self.spec.name, self.pid)

    async def stop(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.spec.stop_signal)
            try:
                await asyncio.wait_for(proc.wait(), self.spec.stop_timeout_s)
            except TimeoutError:
                log.warning("%s did not stop in %.0f s; killing it", self.spec.name, self.spec.stop_timeout_s)
        if proc is not None:
            # Whatever the child left in its session (helpers, postgres backends) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


class Supervisor:
    """Children started in order, stopped in reverse order."""

    def __init__(self, backoff: Backoff, on_change: Callable[[dict[str, int]], None] | None = None) -> None:
        self._backoff = backoff
        self._children: list[Supervised] = []
        self._pids: dict[str, int] = {}
        self._on_change = on_change

    def _record(self, name: str, pid: int) -> None:
        self._pids[name] = pid
        if self._on_change:
            self._on_change(dict(self._pids))

    @property
    def pids(self) -> dict[str, int]:
        return dict(self._pids)

    def child(self, name: str) -> Supervised:
        for c in self._children:
            if c.spec.name == name:
                return c
        raise KeyError(name)

    async def start(self, spec: ProcessSpec) -> Supervised:
        child = Supervised(spec, self._backoff, self._record)
        self._children.append(child)
        log.info("starting %s", spec.name)
        await child.start()
        return child

    async def stop_all(self) -> None:
        for child in reversed(self._children):
            log.info("stopping %s", child.spec.name)
            await child.stop()
        self._children.clear()
