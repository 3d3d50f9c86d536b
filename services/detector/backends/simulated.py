"""Simulated backend: GPUs described by a fleet YAML file, re-read whenever the file changes.

Editing the file while the detector runs simulates a GPU turning unhealthy, recovering,
appearing or disappearing. Its inventory is marked ``simulated`` and is never real hardware.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import ClassVar, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from services.detector.backends.base import HostScan, normalize_bus_id
from services.detector.core import precision_support
from shared.contracts import Gpu, InventorySource
from shared.errors import ConfigError, DetectionError
from shared.names import Name

log = logging.getLogger(__name__)

_UUID_NAMESPACE = uuid.UUID("6f1c3f4e-2b7a-4d55-9a38-0d3c2f9e8b41")


class FleetGpu(BaseModel):
    """One simulated GPU as written in a fleet file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0)
    name: str = Field(min_length=1)
    uuid: str | None = None
    pci_bus_id: str | None = None
    vram_total_mb: int = Field(ge=0)
    vram_used_mb: int = Field(default=0, ge=0)
    utilization_percent: float = Field(default=0.0, ge=0, le=100)
    compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    temperature_c: float | None = None
    power_draw_w: float | None = Field(default=None, ge=0)
    power_limit_w: float = Field(ge=0)
    sm_count: int | None = Field(default=None, ge=1)
    max_sm_clock_mhz: int | None = Field(default=None, ge=1)
    nvlink_peers: tuple[int, ...] = ()
    healthy: bool = True
    health_reason: str | None = None

    @model_validator(mode="after")
    def _used_fits(self) -> Self:
        if self.vram_used_mb > self.vram_total_mb:
            raise ValueError(
                f"vram_used_mb ({self.vram_used_mb}) exceeds vram_total_mb ({self.vram_total_mb})"
            )
        return self


class FleetHost(BaseModel):
    """One simulated host and its GPUs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    gpus: tuple[FleetGpu, ...]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _check_gpus(self.gpus)
        return self


class FleetFile(BaseModel):
    """A fleet file: either ``gpus`` (one host, named after this machine) or ``hosts``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: tuple[FleetGpu, ...] | None = None
    hosts: tuple[FleetHost, ...] | None = None

    @model_validator(mode="after")
    def _one_layout(self) -> Self:
        if (self.gpus is None) == (self.hosts is None):
            raise ValueError("give either 'gpus' (one host) or 'hosts' (several), not both or neither")
        if self.gpus is not None:
            _check_gpus(self.gpus)
        if self.hosts is not None:
            names = [host.name for host in self.hosts]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"host names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def host_gpus(self, default_host: str) -> list[tuple[str, tuple[FleetGpu, ...]]]:
        """(host name, GPUs) pairs; a single-host file is named ``default_host``."""
        if self.hosts is not None:
            return [(host.name, host.gpus) for host in self.hosts]
        return [(default_host, self.gpus or ())]


def _check_gpus(gpus: tuple[FleetGpu, ...]) -> None:
    indices = [gpu.index for gpu in gpus]
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        raise ValueError(f"GPU indices must be unique; repeated: {', '.join(map(str, repeated))}")
    for gpu in gpus:
        for peer in gpu.nvlink_peers:
            if peer == gpu.index or peer not in indices:
                raise ValueError(f"GPU {gpu.index}: nvlink_peers names {peer}, which is not another GPU here")


def load_fleet(path: Path) -> FleetFile:
    """Read and validate a fleet file; ``ConfigError`` names the file and the bad field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"fleet file {path}: cannot read it ({err.strerror or err})") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"fleet file {path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"fleet file {path}: expected a mapping with 'gpus' or 'hosts' at the top")
    try:
        return FleetFile.model_validate(data)
    except ValidationError as err:
        details = "; ".join(_describe(e) for e in err.errors())
        raise ConfigError(f"fleet file {path}: {details}") from err


def _describe(error: ErrorDetails) -> str:
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}" if location else error["msg"]


def to_gpu(host: str, spec: FleetGpu) -> Gpu:
    """The ``Gpu`` a fleet entry describes; uuid and bus id default deterministically."""
    fp16, bf16 = precision_support(spec.compute_capability)
    return Gpu(
        index=spec.index,
        uuid=spec.uuid or f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{host}/{spec.index}')}",
        name=spec.name,
        pci_bus_id=normalize_bus_id(spec.pci_bus_id)
        if spec.pci_bus_id
        else f"00000000:{spec.index + 1:02X}:00.0",
        vram_total_mb=spec.vram_total_mb,
        vram_used_mb=spec.vram_used_mb,
        vram_free_mb=spec.vram_total_mb - spec.vram_used_mb,
        utilization_percent=spec.utilization_percent,
        compute_capability=spec.compute_capability,
        supports_fp16=fp16,
        supports_bf16=bf16,
        temperature_c=spec.temperature_c,
        power_draw_w=spec.power_draw_w,
        power_limit_w=spec.power_limit_w,
        sm_count=spec.sm_count,
        max_sm_clock_mhz=spec.max_sm_clock_mhz,
        nvlink_peers=tuple(sorted(spec.nvlink_peers)),
        healthy=spec.healthy,
        health_reason=None if spec.healthy else (spec.health_reason or "marked unhealthy in the fleet file"),
    )


class SimulatedBackend:
    """GPU inventory from a fleet file; one ``HostScan`` per simulated host."""

    NAME: ClassVar[str] = "simulated"
    SOURCE: ClassVar[InventorySource] = InventorySource.SIMULATED

    def __init__(self, path: Path, *, host: str) -> None:
        """Load the fleet file now; ``ConfigError`` when it is unreadable or invalid."""
        self._path = path
        self._host = host
        self._stamp = self._file_stamp()
        self._fleet = load_fleet(path)
        self._error: ConfigError | None = None

    @classmethod
    def open(cls, *, host: str, fleet: Path) -> SimulatedBackend:
        """Open a fleet file (same as the constructor; here for symmetry with the other backends)."""
        return cls(fleet, host=host)

    def close(self) -> None:
        """Nothing to release."""

    def scan(self) -> list[HostScan]:
        """The fleet as last written; re-read when the file changed.

        A file that became unreadable or invalid fails the scan with ``DetectionError`` naming
        the file and field, until it is fixed.
        """
        self._reload_if_changed()
        if self._error is not None:
            raise DetectionError(str(self._error)) from self._error
        fleet_file = str(self._path)
        return [
            HostScan(
                host=name,
                source=self.SOURCE,
                gpus=tuple(to_gpu(name, spec) for spec in sorted(specs, key=lambda s: s.index)),
                fleet_file=fleet_file,
            )
            for name, specs in self._fleet.host_gpus(self._host)
        ]

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self._path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def _reload_if_changed(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp and stamp is not None:
            return
        self._stamp = stamp
        try:
            self._fleet = load_fleet(self._path)
        except ConfigError as err:
            if self._error is None or str(err) != str(self._error):
                log.warning("fleet file unusable: %s", err)
            self._error = err
            return
        if self._error is not None:
            log.info("fleet file %s is valid again", self._path)
        self._error = None
        log.info("fleet file %s changed; re-read it", self._path)
