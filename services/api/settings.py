"""Settings of the API gateway."""

from __future__ import annotations

from pydantic import Field

from shared.settings import DEFAULT_HTTP_PORT, CommonSettings


class ApiSettings(CommonSettings):
    http_host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    http_port: int = Field(default=DEFAULT_HTTP_PORT, ge=1, le=65535, description="Port to listen on.")
    database_url: str | None = Field(default=None, description="PostgreSQL checked by /healthz.")
    heartbeat_stale_s: float = Field(
        default=10.0, gt=0, description="A service silent this long is reported down by /healthz."
    )
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After sent with 503 and 504 answers.")
    inference_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="How long the gateway waits for a router's answer to an inference request (queueing included).",
    )
