"""A plan in the contracts' words (GB, per-GPU totals) and the difference between two configurations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from services.planner.core.model import Assignment, GpuLoad, Plan, gb
from shared.contracts import AssignmentDiff, GpuPlanLoad, PlanPreview, ServiceAssignment

ChangeKind = Literal["added", "moved", "budget", "removed"]


def _gb(mib: int | None, digits: int) -> float | None:
    return None if mib is None else round(gb(mib), digits)


def service_assignment(a: Assignment) -> ServiceAssignment:
    return ServiceAssignment(
        service=a.service,
        model=a.model,
        host=a.host,
        gpu_indices=a.gpus,
        gpu_uuids=a.gpu_uuids,
        vram_estimate_gb=round(gb(a.vram_mb), 2),
        vram_budget_gb=_gb(a.budget_mb, 1),
        vram_budget_override=_gb(a.override_mb, 2),
        pinned=a.pinned,
        placed_by=a.placed_by,
        enabled=a.enabled,
    )


def gpu_load(load: GpuLoad) -> GpuPlanLoad:
    return GpuPlanLoad(
        host=load.host,
        index=load.index,
        name=load.name,
        capacity_gb=round(gb(load.capacity_mb), 2),
        planned_gb=round(gb(load.planned_mb), 2),
        services=load.services,
        overcommitted=load.overcommitted,
    )


def preview(plan: Plan, saved: Sequence[ServiceAssignment]) -> PlanPreview:
    assignments = tuple(service_assignment(a) for a in plan.assignments)
    return PlanPreview(
        strategy=plan.strategy,
        assignments=assignments,
        warnings=plan.warnings,
        gpus=tuple(gpu_load(load) for load in plan.loads),
        changes=diff(saved, assignments),
        feasible=plan.feasible,
        message=plan.message,
    )


def where(a: ServiceAssignment | None) -> str | None:
    """``GPU 0``, ``GPU 0,1``, ``box-b GPU 1``, ``no GPU`` or ``disabled`` (None: not configured)."""
    if a is None:
        return None
    if not a.enabled:
        return "disabled"
    if not a.gpu_indices:
        return "no GPU"
    host = f"{a.host} " if a.host else ""
    budget = f", budget {a.vram_budget_gb:g} GB" if a.vram_budget_gb is not None else ""
    return f"{host}GPU {','.join(str(i) for i in a.gpu_indices)}{budget}"


def diff(before: Sequence[ServiceAssignment], after: Sequence[ServiceAssignment]) -> tuple[AssignmentDiff, ...]:
    """What changes from ``before`` to ``after``, per service; unchanged services are left out."""
    old = {a.service: a for a in before}
    new = {a.service: a for a in after}
    out = []
    for name in [*new, *(n for n in old if n not in new)]:
        b, a = old.get(name), new.get(name)
        kind: ChangeKind
        if b is None:
            kind = "added"
        elif a is None:
            kind = "removed"
        elif (b.host, b.gpu_indices, b.enabled) != (a.host, a.gpu_indices, a.enabled):
            kind = "moved"
        elif b.vram_budget_gb != a.vram_budget_gb:
            kind = "budget"
        else:
            continue
        out.append(AssignmentDiff(service=name, change=kind, before=where(b), after=where(a)))
    return tuple(out)
