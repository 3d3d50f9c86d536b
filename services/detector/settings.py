"""Settings of the detector service."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import CommonSettings


class DetectorSettings(CommonSettings):
    detector_backend: str = Field(
        default="auto",
        description="auto (NVML, then nvidia-smi, then none), nvml, nvidia-smi, simulated or none.",
    )
    fleet: Path | None = Field(default=None, description="Simulated fleet file; implies the simulated backend.")
    detect_interval_s: float = Field(default=2.0, gt=0, description="Publish the inventory at least this often.")
    detect_poll_s: float = Field(
        default=0.5, gt=0, description="Scan this often, so a change is published at once."
    )
    nvidia_smi_path: str = Field(default="nvidia-smi", description="The nvidia-smi binary to run.")
