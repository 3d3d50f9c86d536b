"""Secrets on disk: ``<data dir>/secrets``, a folder only its owner can enter, files only its owner can read.

``gpuplane up`` creates every secret the stack needs there on first start (the admin token, one NATS
identity per process kind, the PostgreSQL passwords) and hands each child the path of what it needs;
a process started by hand with the same ``GPUPLANE_DATA_DIR`` finds them in the same place.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from shared.errors import ConfigError

SECRETS_DIR = "secrets"
DIR_MODE = 0o700
FILE_MODE = 0o600


def random_token(nbytes: int = 32) -> str:
    """A URL-safe random string with ``nbytes`` of entropy."""
    return secrets.token_urlsafe(nbytes)


def secrets_dir(data_dir: Path, *, create: bool = False) -> Path:
    """``<data dir>/secrets``; with ``create``, made (or tightened) to mode 0700."""
    path = data_dir / SECRETS_DIR
    if create:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)
    return path


def admin_token_file(data_dir: Path) -> Path:
    """Where ``gpuplane up`` keeps the gateway's admin token (the gateway and the CLI read it there)."""
    return secrets_dir(data_dir) / "admin-token"


def engine_token_file(data_dir: Path) -> Path:
    """Where ``gpuplane up`` keeps the token data planes show the engines that workers serve."""
    return secrets_dir(data_dir) / "engine-token"


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` with mode 0600 from the first byte (never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.write(fd, value.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_secret(path: Path, what: str) -> str:
    """The secret in ``path`` (whitespace stripped); ``ConfigError`` naming ``what`` if unreadable or too open."""
    try:
        mode = path.stat().st_mode
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} from {path}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what} file {path} can be read by other users (mode {stat.S_IMODE(mode):o}): chmod 600 it")
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value


def ensure_secret(path: Path, what: str, make: Callable[[], str] = random_token) -> str:
    """The secret in ``path``, created with ``make()`` if the file does not exist yet."""
    if not path.exists():
        write_secret(path, make())
    else:
        # An older gpuplane, or a copy, may have left it readable by others.
        os.chmod(path, FILE_MODE)
    return read_secret(path, what)
