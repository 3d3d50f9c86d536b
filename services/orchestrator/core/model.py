"""What the orchestrator reasons about: the target of each service and what its container runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

TARGET_LABEL = "io.gpuplane.target"
"""Label the override gives each service it manages: a digest of the service's target."""

MANAGED_ENV = ("VRAM_BUDGET_GB", "CUDA_DEVICE_ORDER", "VLLM_TENSOR_PARALLEL_SIZE", "GPUPLANE_ASSIGNED_GPUS")
"""Environment variables the override may set; nothing else in a container's environment is ours."""


@dataclass(frozen=True)
class ServiceTarget:
    """What one service's container should get from the override: GPU device ids and environment.

    A target with no device ids and no environment means "no GPU from gpuplane".
    """

    service: str
    device_ids: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    """Sorted (name, value) pairs."""

    @staticmethod
    def of(service: str, device_ids: tuple[str, ...] = (), env: Mapping[str, str] | None = None) -> ServiceTarget:
        return ServiceTarget(service, tuple(device_ids), tuple(sorted((env or {}).items())))

    @property
    def env_map(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def empty(self) -> bool:
        return not self.device_ids and not self.env

    @property
    def digest(self) -> str:
        """Stable across processes; what ``TARGET_LABEL`` carries."""
        raw = json.dumps({"devices": list(self.device_ids), "env": self.env}, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ContainerView:
    """One container of the compose project as the container engine reports it (inspect)."""

    id: str
    name: str
    service: str
    status: str
    """The engine's word: created, running, exited, restarting, paused, dead..."""
    running: bool
    restarting: bool = False
    restart_count: int = 0
    exit_code: int | None = None
    health: str | None = None
    """healthy, unhealthy or starting when the container has a healthcheck; None when it has none."""
    device_ids: tuple[str, ...] = ()
    """GPU devices the engine gave it, as requested: CDI names after ``nvidia.com/gpu=`` (podman), or
    the device ids of an nvidia device request (docker)."""
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    started_at: datetime | None = None
    created_at: datetime | None = None
    ports: Mapping[int, tuple[str, int]] = field(default_factory=dict)
    """Published TCP ports: container port -> (host address, host port)."""
    addresses: tuple[str, ...] = ()
    """The container's own addresses on its networks."""

    @property
    def has_healthcheck(self) -> bool:
        return self.health is not None

    @property
    def target_digest(self) -> str | None:
        return self.labels.get(TARGET_LABEL)


@dataclass(frozen=True)
class CommandResult:
    """What a compose command did: its exit status and the end of its output."""

    argv: tuple[str, ...]
    returncode: int
    output_tail: str
