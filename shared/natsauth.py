"""NATS credentials: the files ``gpuplane up`` writes for each identity, and how a process finds its own.

A credentials file (``GPUPLANE_NATS_CREDENTIALS_FILE``) is one of:

- gpuplane's own: ``user: <identity>`` and ``password: <secret>`` lines (what ``up`` writes under
  ``<data dir>/secrets/nats/<identity>.creds``);
- a NATS user JWT ``.creds`` file (operator mode, from ``nsc``);
- an NKey seed file (a line starting with ``SU``).

A process that is given none looks for its identity's file under ``GPUPLANE_DATA_DIR``, so a
``gpuplane worker`` started by hand next to ``gpuplane up`` finds it; user and password may also
come in the URL (``nats://worker:secret@host:4222``), as compose files do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shared.errors import ConfigError
from shared.identities import Identity
from shared.secrets import read_secret, secrets_dir, write_secret

JWT_MARKER = "-----BEGIN NATS USER JWT-----"


@dataclass(frozen=True)
class NatsCredentials:
    """How one process proves who it is to nats-server (never printed: ``repr`` hides the secret)."""

    source: str
    """Where they came from, for messages: a file path."""
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    jwt_file: Path | None = None
    nkey_seed: str | None = field(default=None, repr=False)

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.aio.client.Client.connect``."""
        if self.jwt_file is not None:
            return {"user_credentials": str(self.jwt_file)}
        if self.nkey_seed is not None:
            return {"nkeys_seed_str": self.nkey_seed}
        return {"user": self.user, "password": self.password}


def identity_file(data_dir: Path, identity: Identity) -> Path:
    """Where ``gpuplane up`` keeps ``identity``'s credentials."""
    return secrets_dir(data_dir) / "nats" / f"{identity.value}.creds"


def write_identity(path: Path, identity: Identity, password: str) -> None:
    write_secret(
        path,
        f"# gpuplane NATS identity {identity.value!r}: keep this file secret (mode 0600)\n"
        f"user: {identity.value}\npassword: {password}\n",
    )


def load_credentials(path: Path) -> NatsCredentials:
    """Read a credentials file of any of the three kinds; ``ConfigError`` names the file and what is wrong."""
    text = read_secret(path, "NATS credentials")
    if JWT_MARKER in text:
        return NatsCredentials(source=str(path), jwt_file=path)
    first = text.splitlines()[0].strip()
    if first.startswith("SU") and len(first) > 50:
        return NatsCredentials(source=str(path), nkey_seed=first)
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ConfigError(f"NATS credentials file {path}: expected 'user: ...' and 'password: ...' lines")
        fields[key.strip()] = value.strip()
    if not fields.get("user") or not fields.get("password"):
        raise ConfigError(f"NATS credentials file {path}: needs both 'user:' and 'password:'")
    return NatsCredentials(source=str(path), user=fields["user"], password=fields["password"])


def find_credentials(explicit: Path | None, data_dir: Path, identity: Identity) -> NatsCredentials | None:
    """The credentials file given, else ``identity``'s under ``data_dir`` if ``gpuplane up`` made one, else None."""
    if explicit is not None:
        return load_credentials(explicit)
    default = identity_file(data_dir, identity)
    return load_credentials(default) if default.exists() else None


def redact_url(url: str) -> str:
    """A NATS URL (or comma-separated list) with any password replaced by ``***``, for logs and messages."""
    parts = []
    for one in url.split(","):
        split = urlsplit(one.strip())
        if split.password is not None:
            host = split.hostname or ""
            port = f":{split.port}" if split.port else ""
            split = split._replace(netloc=f"{split.username}:***@{host}{port}")
        parts.append(urlunsplit(split))
    return ",".join(parts)
