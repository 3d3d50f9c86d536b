"""Settings of the planner service."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from shared.settings import CommonSettings, path_list


class PlannerSettings(CommonSettings):
    database_url: str | None = Field(
        default=None, description="PostgreSQL that keeps the configuration (unset: preview only, no saving)."
    )
    catalog_file: Path = Field(
        default=Path("config/services.yml"), description="The GPU service catalog, when no compose file describes one."
    )
    compose_files: str = Field(
        default="",
        description="Comma-separated compose files of the AI stack; services annotated there form the catalog.",
    )
    config_dir: Path = Field(default=Path("config"), description="Where gpu-assignments.yml is written.")
    default_strategy: str = Field(default="vram_based", description="Strategy used until one is saved.")
    vram_headroom_gb: float = Field(
        default=0.5, ge=0, le=16, description="VRAM left free on a GPU when an adjustable budget is lowered."
    )
    device_record_interval_s: float = Field(
        default=30.0, gt=0, description="How often unchanged GPU readings are written to gpu_devices."
    )
    database_retry_s: float = Field(default=2.0, gt=0, description="Wait between attempts to reach the database.")

    @field_validator("default_strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from services.planner.core.strategies import STRATEGY_NAMES

        if value not in STRATEGY_NAMES:
            raise ValueError(f"unknown strategy {value!r}; valid strategies: {', '.join(STRATEGY_NAMES)}")
        return value

    def compose_paths(self) -> tuple[Path, ...]:
        return path_list(self.compose_files)

    @property
    def mirror_path(self) -> Path:
        return self.config_dir / "gpu-assignments.yml"
