"""Settings shared by every service. Each service subclasses ``CommonSettings`` once.

Values come from (highest first): explicit keyword arguments (the CLI flags), ``GPUPLANE_*``
environment variables, then the defaults here. Nothing reads the environment at import time.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_NATS_PORT = 4222
DEFAULT_HTTP_PORT = 8080


def default_host_name() -> str:
    return socket.gethostname() or "localhost"


class CommonSettings(BaseSettings):
    """What every gpuplane process needs."""

    model_config = SettingsConfigDict(env_prefix="GPUPLANE_", extra="ignore", frozen=True)

    nats_url: str = Field(
        default=f"nats://127.0.0.1:{DEFAULT_NATS_PORT}",
        description="NATS server(s) to connect to, comma-separated.",
    )
    host_name: str = Field(
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
        default=None, description="OTLP/HTTP endpoint for traces; none exported when unset."
    )
    heartbeat_interval_s: float = Field(default=2.0, gt=0, description="How often a service says it is alive.")
    request_timeout_s: float = Field(default=5.0, gt=0, description="Default timeout of a bus request.")
    drain_timeout_s: float = Field(default=5.0, gt=0, description="How long a stopping service may drain.")


def data_dir_path(raw: str | Path) -> Path:
    return Path(raw).expanduser().resolve()


def path_list(raw: str) -> tuple[Path, ...]:
    """A comma-separated setting of paths (``a.yml, b.yml``), blanks dropped."""
    return tuple(Path(part.strip()) for part in raw.split(",") if part.strip())
