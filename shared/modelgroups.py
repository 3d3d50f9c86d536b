"""The model-group catalog (``config/model_groups.yml``): which models load together, and how big they are.

Routers read it to map a request's model to its group; workers read it to know what they may
load. A group is loaded and evicted as a whole. ``latency_s`` and ``load_time_s`` are what the
simulated backend takes; with real backends they are only the router's first guesses until
workers report measured figures.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from shared.contracts import GroupInfo, InferenceKind, ModelInfo
from shared.errors import ConfigError
from shared.names import Name


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    kind: InferenceKind = InferenceKind.CHAT
    small: bool = False
    """Small enough to run on a CPU worker when no GPU worker is healthy."""
    latency_s: float = Field(default=0.5, gt=0, le=3600)
    """Time for one typical request on a speed-1.0 GPU (the simulated backend's figure)."""


class GroupEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Name
    vram_gb: float = Field(gt=0, le=4096)
    load_time_s: float = Field(default=5.0, ge=0, le=3600)
    """Loading from disk; from the CPU cache it takes ``cpu_reload_fraction`` of that."""
    models: tuple[ModelEntry, ...] = Field(min_length=1)

    def info(self) -> GroupInfo:
        return GroupInfo(
            group_id=self.id,
            models=tuple(ModelInfo(id=m.id, kind=m.kind, small=m.small) for m in self.models),
            vram_gb=self.vram_gb,
            load_time_s=self.load_time_s,
        )


class ModelCatalog(BaseModel):
    """Every group; model ids are unique across groups."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    groups: tuple[GroupEntry, ...] = Field(min_length=1)
    cpu_reload_fraction: float = Field(default=0.2, gt=0, le=1)
    _by_model: dict[str, tuple[GroupEntry, ModelEntry]] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _unique(self) -> ModelCatalog:
        seen_groups: set[str] = set()
        seen_models: dict[str, str] = {}
        for group in self.groups:
            if group.id in seen_groups:
                raise ValueError(f"group {group.id!r} is listed twice")
            seen_groups.add(group.id)
            for model in group.models:
                if model.id in seen_models:
                    raise ValueError(
                        f"model {model.id!r} is in both group {seen_models[model.id]!r} and group {group.id!r}"
                    )
                seen_models[model.id] = group.id
        self._by_model = {m.id: (g, m) for g in self.groups for m in g.models}
        return self

    def group(self, group_id: str) -> GroupEntry | None:
        return next((g for g in self.groups if g.id == group_id), None)

    def group_of(self, model_id: str) -> GroupEntry | None:
        return self._index().get(model_id, (None, None))[0]

    def model(self, model_id: str) -> ModelEntry | None:
        return self._index().get(model_id, (None, None))[1]

    def _index(self) -> dict[str, tuple[GroupEntry, ModelEntry]]:
        """Model id -> its group and entry, built once: every request looks its model up."""
        if self._by_model is None:
            self._by_model = {m.id: (g, m) for g in self.groups for m in g.models}
        return self._by_model

    def group_id_for(self, model_id: str) -> str:
        """The group a model loads with; a model missing from the catalog is a group of its own."""
        group = self.group_of(model_id)
        return group.id if group is not None else model_id

    def model_ids(self) -> tuple[str, ...]:
        return tuple(m.id for g in self.groups for m in g.models)

    def infos(self) -> tuple[GroupInfo, ...]:
        return tuple(g.info() for g in self.groups)


def load_model_catalog(path: Path) -> ModelCatalog:
    """Read and check the catalog; ``ConfigError`` names the file and the entry at fault."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"the model-group catalog {path} (GPUPLANE_MODEL_GROUPS_FILE) does not exist") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the model-group catalog {path}: {exc}") from exc
    try:
        return ModelCatalog.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"the model-group catalog {path} is invalid: {problems}") from exc
