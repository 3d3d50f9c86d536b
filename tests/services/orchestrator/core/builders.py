"""Builders for the orchestrator's pure core: assignments, configurations, targets and containers.

Sensible defaults; a test overrides only what it is about. Times are fixed, never read from the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from services.orchestrator.core.model import TARGET_LABEL, ContainerView, ServiceTarget
from shared.contracts import GpuConfig, ServiceAssignment
from tests.builders import FIXED_TIME

T0 = FIXED_TIME
"""When the container was (re)created in health tests: ``since``."""


def at(seconds: float) -> datetime:
    """``seconds`` after ``T0`` (negative: before)."""
    return T0 + timedelta(seconds=seconds)


def gpu_uuid(index: int) -> str:
    """The UUID ``tests.builders.make_gpu`` gives the GPU at ``index``."""
    return f"GPU-00000000-0000-4000-8000-{index:012x}"


def make_assignment(
    service: str = "ai-llm",
    gpu_indices: Sequence[int] = (0,),
    *,
    gpu_uuids: Sequence[str] | None = None,
    vram_budget_gb: float | None = None,
    enabled: bool = True,
    host: str | None = "box-a",
    model: str = "some-model",
    vram_estimate_gb: float = 2.0,
    placed_by: str = "vram_based",
) -> ServiceAssignment:
    """An assignment of ``service`` to ``gpu_indices``; UUIDs follow from the indices unless given."""
    uuids = tuple(gpu_uuids) if gpu_uuids is not None else tuple(gpu_uuid(i) for i in gpu_indices)
    return ServiceAssignment(
        service=service,
        model=model,
        host=host,
        gpu_indices=tuple(gpu_indices),
        gpu_uuids=uuids,
        vram_estimate_gb=vram_estimate_gb,
        vram_budget_gb=vram_budget_gb,
        placed_by=placed_by if enabled else "disabled",
        enabled=enabled,
    )


def make_config(*assignments: ServiceAssignment, revision: int = 3, strategy: str = "vram_based") -> GpuConfig:
    return GpuConfig(strategy=strategy, saved=True, saved_at=T0, revision=revision, assignments=assignments)


def make_target(
    service: str = "ai-llm", device_ids: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> ServiceTarget:
    return ServiceTarget.of(service, tuple(device_ids), env)


def gpu_target(service: str = "ai-llm", *ids: str, budget: str | None = None) -> ServiceTarget:
    """The target ``target_of`` makes for ``ids`` (default one GPU "0"), with an optional budget."""
    ids = ids or ("0",)
    env = {"GPUPLANE_ASSIGNED_GPUS": ",".join(ids)}
    if budget is not None:
        env["VRAM_BUDGET_GB"] = budget
    if len(ids) > 1:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["VLLM_TENSOR_PARALLEL_SIZE"] = str(len(ids))
    return ServiceTarget.of(service, ids, env)


def make_container(
    service: str = "ai-llm",
    *,
    id: str | None = None,
    name: str | None = None,
    status: str = "running",
    running: bool | None = None,
    restarting: bool = False,
    restart_count: int = 0,
    exit_code: int | None = None,
    health: str | None = None,
    device_ids: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    label: str | None = None,
    labels: Mapping[str, str] | None = None,
    started_at: datetime | None = None,
    created_at: datetime | None = None,
) -> ContainerView:
    """A container of ``service``; ``running`` follows ``status``; ``label`` sets gpuplane's target label."""
    all_labels = {"com.docker.compose.service": service, **(labels or {})}
    if label is not None:
        all_labels[TARGET_LABEL] = label
    return ContainerView(
        id=id if id is not None else f"{service}-id",
        name=name if name is not None else f"project-{service}-1",
        service=service,
        status=status,
        running=running if running is not None else status == "running",
        restarting=restarting,
        restart_count=restart_count,
        exit_code=exit_code,
        health=health,
        device_ids=tuple(device_ids),
        env=dict(env or {}),
        labels=all_labels,
        started_at=started_at,
        created_at=created_at,
    )


def applied(
    target: ServiceTarget,
    *,
    id: str | None = None,
    device_ids: Sequence[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    label: str | None = None,
) -> ContainerView:
    """A running container of ``target.service`` as gpuplane applied ``target``: its devices, environment, label.

    ``device_ids`` replaces the devices, ``extra_env`` adds to (or replaces entries of) the environment,
    ``label`` replaces the digest.
    """
    return make_container(
        target.service,
        id=id,
        device_ids=target.device_ids if device_ids is None else device_ids,
        env={**target.env_map, **(extra_env or {})},
        label=target.digest if label is None else label,
    )
