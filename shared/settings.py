"""Settings shared by every service. Each service subclasses ``CommonSettings`` once.

Values come from (highest first): explicit keyword arguments (the CLI flags), ``GPUPLANE_*``
environment variables, then the defaults here. Nothing reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.identities import Identity
from shared.names import Name
from shared.natsauth import NatsCredentials, find_credentials
from shared.secrets import engine_token_file, read_secret

DEFAULT_NATS_PORT = 4222
DEFAULT_HTTP_PORT = 8080


def is_loopback(host: str) -> bool:
    """Whether an address to listen on is reachable from this machine only."""
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def default_host_name() -> str:
    return socket.gethostname() or "localhost"


class CommonSettings(BaseSettings):
    """What every gpuplane process needs."""

    model_config = SettingsConfigDict(env_prefix="GPUPLANE_", extra="ignore", frozen=True)

    nats_url: str = Field(
        default=f"nats://127.0.0.1:{DEFAULT_NATS_PORT}",
        description="NATS server(s) to connect to, comma-separated (user and password may be in the URL).",
    )
    nats_credentials_file: Path | None = Field(
        default=None,
        description="This process's NATS credentials (default: its identity's file under GPUPLANE_DATA_DIR, "
        "if gpuplane up wrote one).",
    )
    data_dir: Path = Field(
        default=Path(".gpuplane"),
        description="Where gpuplane up keeps its data and secrets (processes started by hand find their "
        "NATS identity there).",
    )
    host_name: Name = Field(
        default_factory=default_host_name,
        description="Name of this machine in subjects and inventories.",
    )
    log_level: str = Field(default="INFO", description="Python logging level.")
    log_json: bool = Field(default=False, description="Log one JSON object per line.")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Serve Prometheus metrics on this port (0: off)."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address of the metrics endpoint (0.0.0.0 in a container)."
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP endpoint for traces (the standard OTEL_EXPORTER_OTLP_ENDPOINT works too); "
        "no spans are made when neither is set.",
    )
    trace_status_messages: bool = Field(
        default=False, description="Also trace heartbeats and worker statuses (noisy; off by default)."
    )
    heartbeat_interval_s: float = Field(default=2.0, gt=0, description="How often a service says it is alive.")
    request_timeout_s: float = Field(default=5.0, gt=0, description="Default timeout of a bus request.")
    drain_timeout_s: float = Field(default=5.0, gt=0, description="How long a stopping service may drain.")
    engine_token: SecretStr | None = Field(
        default=None,
        description="The bearer token between data planes and the engines workers serve (else "
        "GPUPLANE_ENGINE_TOKEN_FILE, else <data dir>/secrets/engine-token if it exists; none: engines open).",
    )
    engine_token_file: Path | None = Field(default=None, description="File holding GPUPLANE_ENGINE_TOKEN.")

    def engine_token_value(self) -> str | None:
        """The engine token, from the setting, its file, or ``<data dir>/secrets/engine-token``."""
        if self.engine_token is not None:
            return self.engine_token.get_secret_value().strip() or None
        path = self.engine_token_file or engine_token_file(self.data_dir)
        if self.engine_token_file is None and not path.exists():
            return None
        return read_secret(path, "engine token")

    def nats_credentials(self, identity: Identity) -> NatsCredentials | None:
        """This process's NATS credentials: the file given, else ``identity``'s under the data dir, if any."""
        return find_credentials(self.nats_credentials_file, self.data_dir, identity)


def data_dir_path(raw: str | Path) -> Path:
    return Path(raw).expanduser().resolve()


def path_list(raw: str) -> tuple[Path, ...]:
    """A comma-separated setting of paths (``a.yml, b.yml``), blanks dropped."""
    return tuple(Path(part.strip()) for part in raw.split(",") if part.strip())
