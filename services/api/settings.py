"""Settings of the API gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from services.router.settings import RouterSettings
from shared.errors import ConfigError
from shared.names import Name
from shared.secrets import admin_token_file, read_secret
from shared.settings import DEFAULT_HTTP_PORT, is_loopback

MIB = 1024 * 1024


class ApiSettings(RouterSettings):
    """The gateway's settings; it hosts a data plane, so the router's settings (GPUPLANE_ROUTING_POLICY, the
    queue, retries, batching) apply to its /v1 requests too."""

    http_host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    http_port: int = Field(default=DEFAULT_HTTP_PORT, ge=1, le=65535, description="Port to listen on.")
    database_url: str | None = Field(
        default=None, description="PostgreSQL: inference keys and the audit trail; checked by /healthz."
    )
    heartbeat_stale_s: float = Field(
        default=10.0, gt=0, description="A service silent this long is reported down by /healthz."
    )
    health_probe_timeout_s: float = Field(
        default=2.0, gt=0, description="/healthz asks each service directly; one silent this long is down."
    )
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After sent with 503 and 504 answers.")
    inference_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Longest a /v1 request may wait for its answer (for a stream: its first chunk), queueing included.",
    )

    # Access.
    auth: Literal["on", "off"] = Field(
        default="on", description="off: no credentials asked (refused unless every listener is on loopback)."
    )
    api_token: SecretStr | None = Field(default=None, description="The admin token (else GPUPLANE_API_TOKEN_FILE).")
    api_token_file: Path | None = Field(
        default=None, description="File holding the admin token (default: <data dir>/secrets/admin-token)."
    )
    api_token_name: Name = Field(default="admin", description="Who the admin token is in the audit trail.")
    allowed_hosts: str = Field(
        default="",
        description="Host names this gateway answers to besides loopback names and IP addresses, "
        "comma-separated (* for any); other Host headers get 421 (DNS rebinding).",
    )
    metrics_public: bool = Field(default=True, description="/metrics without a credential (for Prometheus).")
    session_ttl_s: float = Field(default=12 * 3600.0, gt=0, description="How long a console login lasts.")
    event_streams_max: int = Field(
        default=64, ge=1, le=10_000, description="Most console event streams (/api/events) open at once."
    )
    control_body_max_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest body of a request outside /v1 (else 413)."
    )
    inference_body_max_bytes: int = Field(
        default=4 * MIB, ge=1024, le=7 * MIB, description="Largest body of a /v1 request (else 413)."
    )
    keys_refresh_s: float = Field(
        default=30.0, gt=0, description="How often the inference keys are re-read (other gateways' changes)."
    )

    @field_validator("http_host")
    @classmethod
    def _host(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _auth_off_on_loopback_only(self) -> ApiSettings:
        if self.auth == "off":
            open_on = [h for h in (self.http_host, self.metrics_host) if not is_loopback(h)]
            if self.metrics_port == 0 and self.metrics_host in open_on:
                open_on.remove(self.metrics_host)
            if open_on:
                raise ValueError(
                    f"GPUPLANE_AUTH=off is allowed only while every listener is on loopback; "
                    f"{', '.join(open_on)} is not"
                )
        return self

    def allowed_host_names(self) -> frozenset[str]:
        return frozenset(h.strip().lower().rstrip(".") for h in self.allowed_hosts.split(",") if h.strip())

    def admin_token(self) -> str | None:
        """The admin token: GPUPLANE_API_TOKEN, else the token file, else ``<data dir>/secrets/admin-token``."""
        if self.api_token is not None:
            value = self.api_token.get_secret_value().strip()
            if len(value) < 16:
                raise ConfigError("GPUPLANE_API_TOKEN must be at least 16 characters")
            return value
        path = self.api_token_file or admin_token_file(self.data_dir)
        if self.api_token_file is None and not path.exists():
            return None
        return read_secret(path, "admin token")
