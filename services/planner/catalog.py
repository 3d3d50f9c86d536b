"""The service catalog: what each GPU service needs, from ``config/services.yml`` or compose files.

A compose service joins the catalog through an ``x-gpuplane`` extension or ``gpuplane.*``
labels carrying the same keys as ``services.yml``::

    services:
      ai-llm:
        image: ...
        x-gpuplane: {model: Nemotron-30B, vram_gb: 21.7, role: llm, critical_path: true}
      ai-clip:
        labels: [gpuplane.vram_gb=1.2, gpuplane.model=CLIP ViT-L]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.planner.core.model import Precision, Role, ServiceSpec, mb
from shared.contracts import ServiceApi
from shared.errors import ConfigError
from shared.names import NAME_RULE, is_valid_name

LABEL_PREFIX = "gpuplane."
EXTENSION_KEY = "x-gpuplane"


class CatalogEntry(BaseModel):
    """One service's needs as users write them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    vram_gb: float = Field(gt=0, le=4096)
    short_name: str | None = None
    budget_adjustable: bool = False
    min_vram_gb: float | None = Field(default=None, gt=0)
    critical_path: bool = False
    role: Role = Role.OTHER
    gpus: int = Field(default=1, ge=1, le=64)
    precision: Precision | None = None
    api: ServiceApi | None = None
    """An OpenAI-compatible API the service serves: the orchestrator's agents route to it once placed."""

    @model_validator(mode="after")
    def _min_below_estimate(self) -> CatalogEntry:
        if self.min_vram_gb is not None and self.min_vram_gb > self.vram_gb:
            raise ValueError(f"min_vram_gb ({self.min_vram_gb}) is above vram_gb ({self.vram_gb})")
        return self

    def spec(self, name: str) -> ServiceSpec:
        return ServiceSpec(
            name=name,
            model=self.model,
            vram_mb=mb(self.vram_gb),
            budget_adjustable=self.budget_adjustable,
            min_vram_mb=mb(self.min_vram_gb) if self.min_vram_gb is not None else None,
            critical_path=self.critical_path,
            role=self.role,
            gpu_count=self.gpus,
            precision=self.precision,
            short_name=self.short_name,
        )


def parse_catalog(data: object, source: str) -> tuple[ServiceSpec, ...]:
    """``{"services": {name: entry}}`` to specs; ``ConfigError`` names the file and the field."""
    if not isinstance(data, Mapping) or not isinstance(data.get("services"), Mapping):
        raise ConfigError(f"{source}: expected a mapping with a 'services' mapping at the top")
    specs = []
    for name, raw in data["services"].items():
        specs.append(_entry(raw, str(name), lambda _: source).spec(str(name)))
    if not specs:
        raise ConfigError(f"{source}: 'services' is empty; list at least one GPU service")
    return tuple(specs)


def _entry(raw: object, name: str, source_of: Callable[[str | None], str]) -> CatalogEntry:
    """Validate one service's entry; each problem names the file that set the key at fault."""
    if not is_valid_name(name):
        # The name reaches compose commands, override files and subjects: refuse it here, where the file is known.
        raise ConfigError(f"{source_of(None)}: services.{name!r}: the service name is not valid: use {NAME_RULE}")
    try:
        return CatalogEntry.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            key = str(e["loc"][0]) if e["loc"] else None
            field = ".".join(str(p) for p in e["loc"]) or "entry"
            problems.append(f"{source_of(key)}: services.{name}: {field}: {e['msg']}")
        raise ConfigError("; ".join(problems)) from None


def catalog_from_compose(documents: Sequence[tuple[str, object]]) -> tuple[ServiceSpec, ...]:
    """Services annotated in compose files (later files override earlier ones, as compose merges)."""
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, dict[str, str]] = {}
    for source, doc in documents:
        services = doc.get("services") if isinstance(doc, Mapping) else None
        if not isinstance(services, Mapping):
            continue
        for name, body in services.items():
            if not isinstance(body, Mapping):
                continue
            extension = body.get(EXTENSION_KEY) or {}
            if not isinstance(extension, Mapping):
                raise ConfigError(f"{source}: services.{name}.{EXTENSION_KEY} must be a mapping")
            found = {**_labels(body.get("labels")), **extension}
            if found:
                merged.setdefault(str(name), {}).update(found)
                origin.setdefault(str(name), {}).update({str(k): source for k in found})

    def source_of(name: str) -> Callable[[str | None], str]:
        files = origin[name]
        return lambda key: files.get(key or "") or " + ".join(dict.fromkeys(files.values()))

    return tuple(_entry(raw, name, source_of(name)).spec(name) for name, raw in merged.items())


def _labels(labels: object) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    if isinstance(labels, Mapping):
        pairs = {str(k): v for k, v in labels.items()}
    elif isinstance(labels, list):
        for item in labels:
            key, _, value = str(item).partition("=")
            pairs[key] = value
    return {k[len(LABEL_PREFIX):]: v for k, v in pairs.items() if k.startswith(LABEL_PREFIX)}


def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc


def load_catalog(catalog_file: Path, compose_files: Sequence[Path] = ()) -> tuple[tuple[ServiceSpec, ...], str]:
    """The catalog and where it came from: annotated compose services if any, else ``catalog_file``."""
    if compose_files:
        specs = catalog_from_compose([(str(p), _read_yaml(p)) for p in compose_files])
        if specs:
            return specs, ", ".join(str(p) for p in compose_files)
    return parse_catalog(_read_yaml(catalog_file), str(catalog_file)), str(catalog_file)
