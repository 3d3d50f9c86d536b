"""The secrets ``gpuplane up`` makes on first start and hands to its children.

Everything lives under ``<data dir>/secrets`` (mode 0700, files 0600): one NATS identity per process
kind (``nats/<identity>.creds``), whose bcrypt hashes and permissions go into the embedded
nats-server's config, and the gateway's admin token (``admin-token``). Deleting a file and
restarting ``up`` rotates that secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import bcrypt

from shared.identities import Identity, render_users
from shared.natsauth import NatsCredentials, find_credentials, identity_file, load_credentials, write_identity
from shared.secrets import admin_token_file, engine_token_file, ensure_secret, random_token, secrets_dir

# The passwords are 256 random bits, so bcrypt's cost buys nothing; a low one keeps connects cheap.
BCRYPT_ROUNDS = 8


def nats_identities(data_dir: Path) -> dict[Identity, Path]:
    """Every identity's credentials file, created with a random password where missing."""
    secrets_dir(data_dir, create=True)
    (secrets_dir(data_dir) / "nats").mkdir(mode=0o700, exist_ok=True)
    files = {}
    for identity in Identity:
        path = identity_file(data_dir, identity)
        if not path.exists():
            write_identity(path, identity, random_token())
        files[identity] = path
    return files


def nats_authorization(files: Mapping[Identity, Path], hosts: Iterable[str]) -> str:
    """The users block of the embedded server's config: bcrypt hashes, never the passwords."""
    hashes = {}
    for identity, path in files.items():
        password = load_credentials(path).password or ""
        hashes[identity] = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
    return render_users(hashes, hosts)


def url_with_credentials(url: str, creds: NatsCredentials) -> str:
    """``nats://user:password@host:port``, for a client that takes only a URL (the observer's, in the banner)."""
    split = urlsplit(url)
    user = quote(creds.user or "", safe="")
    password = quote(creds.password or "", safe="")
    return urlunsplit(split._replace(netloc=f"{user}:{password}@{split.hostname}:{split.port}"))


def admin_token(data_dir: Path, explicit: str | None) -> tuple[str, Path | None]:
    """The gateway's admin token: ``GPUPLANE_API_TOKEN`` when set, else ``<data dir>/secrets/admin-token``
    (made on first start). Returns the token and the file it is kept in (None when given explicitly)."""
    if explicit:
        return explicit, None
    secrets_dir(data_dir, create=True)
    path = admin_token_file(data_dir)
    return ensure_secret(path, "admin token"), path


@dataclass(frozen=True)
class StackAccess:
    """The credentials of one ``up``: what each child is handed, and what the banner shows."""

    data_dir: Path
    identities: Mapping[Identity, Path]
    """Every identity's credentials file; empty with an external NATS (children then look under the data dir)."""
    admin_token: str | None
    """None with GPUPLANE_AUTH=off."""
    admin_token_file: Path | None
    """Where the token is kept; None when GPUPLANE_API_TOKEN gave it (the api reads the variable too)."""

    def child_env(self, identity: Identity) -> dict[str, str]:
        env = {"GPUPLANE_DATA_DIR": str(self.data_dir)}
        if identity in self.identities:
            env["GPUPLANE_NATS_CREDENTIALS_FILE"] = str(self.identities[identity])
        if identity is Identity.API and self.admin_token_file is not None:
            env["GPUPLANE_API_TOKEN_FILE"] = str(self.admin_token_file)
        return env

    def credentials(self, identity: Identity) -> NatsCredentials | None:
        """``up``'s own connections (the admin's streams, the observer's first inventory)."""
        return find_credentials(self.identities.get(identity), self.data_dir, identity)

    def login_url(self, api: str) -> str | None:
        return f"{api}/?token={quote(self.admin_token, safe='')}" if self.admin_token else None

    def observer_url(self, nats_url: str) -> str | None:
        creds = self.credentials(Identity.OBSERVER) if Identity.OBSERVER in self.identities else None
        return url_with_credentials(nats_url, creds) if creds and creds.password else None


def prepare_access(
    data_dir: Path, *, embedded_nats: bool, auth_off: bool, api_token: str | None
) -> StackAccess:
    """Make (on first start) and gather the stack's secrets."""
    secrets_dir(data_dir, create=True)
    # Gateways and routers show it to the engines workers serve; every child finds it under the data dir.
    ensure_secret(engine_token_file(data_dir), "engine token")
    identities = nats_identities(data_dir) if embedded_nats else {}
    token, token_file = (None, None) if auth_off else admin_token(data_dir, api_token)
    return StackAccess(data_dir, identities, token, token_file)
