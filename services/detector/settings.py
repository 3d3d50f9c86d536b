"""Settings of the detector service."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

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

    @field_validator("detector_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return check_backend_name(value)


def check_backend_name(value: str) -> str:
    """Fail at start-up on an unknown backend, listing the valid ones."""
    from services.detector.backends import BACKEND_NAMES

    if value not in BACKEND_NAMES:
        raise ValueError(f"unknown GPU backend {value!r}; valid: {', '.join(BACKEND_NAMES)}")
    return value
