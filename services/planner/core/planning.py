"""``make_plan``: pins, then the strategy, then budgets, warnings and per-GPU totals."""

from __future__ import annotations

from services.planner.core.framework import Strategy, supports
from services.planner.core.ledger import Ledger, Tenant, tenant_for
from services.planner.core.model import (
    Assignment,
    GpuKey,
    GpuLoad,
    Placement,
    Plan,
    Problem,
    ServiceSpec,
    fmt_gb,
)

NO_GPUS = "No GPUs detected"


def make_plan(problem: Problem, strategy: Strategy) -> Plan:
    """Plan every enabled service of ``problem`` with ``strategy``; never raises for infeasibility."""
    ledger = Ledger(problem.gpus, problem.headroom_mb)
    specs = {s.name: s for s in problem.services}
    warnings: list[str] = []
    placements: dict[str, Placement] = {}

    enabled = [s for s in problem.services if (p := problem.pin(s.name)) is None or p.enabled]
    for spec in enabled:
        pin = problem.pin(spec.name)
        if pin is None or pin.gpus is None:
            continue
        keys = tuple(GpuKey(pin.host or _only_host(problem), i) for i in pin.gpus)
        known = tuple(k for k in keys if k in ledger)
        ledger.add(known, tenant_for(spec, pin.budget_mb))
        placements[spec.name] = Placement(spec.name, keys, pinned=True)
        warnings += _pin_warnings(problem, spec, keys, known)

    pending = [s for s in enabled if s.name not in placements]
    notes: tuple[str, ...] = ()
    if problem.gpus:
        decision = strategy.place(problem, ledger, pending)
        placements.update({p.service: p for p in decision.placements})
        notes = decision.notes
    else:
        placements.update({s.name: Placement(s.name, (), reason=NO_GPUS) for s in pending})

    assignments = tuple(
        _assignment(problem, ledger, spec, placements.get(spec.name), strategy.NAME) for spec in problem.services
    )
    for a in assignments:
        spec = specs[a.service]
        placement = placements.get(a.service)
        if placement is not None and not placement.gpus and placement.reason != NO_GPUS:
            warnings.append(f"{a.service} could not be placed: {placement.reason}.")
        warnings += _service_warnings(problem, ledger, spec, a)
    loads = tuple(_load(problem, ledger, g.key, g.name) for g in problem.gpus)
    warnings += _overcommit_warnings(problem, ledger, loads, specs, assignments)
    warnings += notes
    if not problem.gpus:
        warnings.insert(0, f"{NO_GPUS}: nothing can be placed on a GPU until the detector reports one.")
    return Plan(
        strategy=strategy.NAME,
        assignments=assignments,
        warnings=tuple(dict.fromkeys(warnings)),
        loads=loads,
        message=NO_GPUS if not problem.gpus else None,
        unplaced=tuple(a.service for a in assignments if a.enabled and not a.gpus),
    )


def _only_host(problem: Problem) -> str:
    """The host a pin without one means: the only host there is (none: no GPUs at all)."""
    return problem.hosts[0] if len(problem.hosts) == 1 else ""


def _assignment(
    problem: Problem, ledger: Ledger, spec: ServiceSpec, placement: Placement | None, strategy: str
) -> Assignment:
    pin = problem.pin(spec.name)
    override = pin.budget_mb if pin is not None else None
    if placement is None:  # disabled
        return Assignment(spec.name, spec.model, None, (), (), spec.vram_mb, None, override, False, "disabled", False)
    keys = placement.gpus
    uuids = tuple(slot.uuid for k in keys if (slot := problem.slot(k)) is not None)
    budget = override
    if budget is None and spec.budget_adjustable:
        shrunk = [ledger.budgets(k).get(spec.name) for k in keys if k in ledger]
        settled = [v for v in shrunk if v is not None]
        if settled:
            budget = min(settled) * spec.gpu_count
    return Assignment(
        service=spec.name,
        model=spec.model,
        host=keys[0].host if keys else None,
        gpus=tuple(k.index for k in keys),
        gpu_uuids=uuids,
        vram_mb=spec.vram_mb,
        budget_mb=budget,
        override_mb=override,
        pinned=placement.pinned,
        placed_by="manual" if placement.pinned else ("auto" if strategy == "manual" else strategy),
    )


def _where(problem: Problem, keys: tuple[GpuKey, ...] | list[GpuKey]) -> str:
    return ", ".join(problem.gpu_label(k.host, k.index) for k in keys)


def _capacity_text(problem: Problem, key: GpuKey) -> str:
    slot = problem.slot(key)
    return fmt_gb(slot.capacity_mb) if slot else "?"


def _pin_warnings(
    problem: Problem, spec: ServiceSpec, keys: tuple[GpuKey, ...], known: tuple[GpuKey, ...]
) -> list[str]:
    out = []
    missing = [k for k in keys if k not in known]
    if missing:
        out.append(
            f"{spec.name} is set to {_where(problem, missing)}, which the detector does not report "
            "(it may be gone for now); kept as you set it."
        )
    for k in known:
        slot = problem.slot(k)
        if slot is not None and not slot.healthy:
            reason = f" ({slot.health_reason})" if slot.health_reason else ""
            out.append(f"{spec.name} is set to {_where(problem, [k])}, which is unhealthy{reason}.")
    if len(keys) != spec.gpu_count:
        out.append(f"{spec.name} needs {spec.gpu_count} GPU(s) but is set to {len(keys)}.")
    return out


def _service_warnings(problem: Problem, ledger: Ledger, spec: ServiceSpec, a: Assignment) -> list[str]:
    if not a.gpus:
        return []
    keys = [GpuKey(a.host or "", i) for i in a.gpus]
    slots = [s for k in keys if (s := problem.slot(k)) is not None]
    out = []
    if spec.precision is not None:
        lacking = [s for s in slots if not supports(s, spec)]
        if lacking:
            out.append(
                f"{spec.name} needs {spec.precision.value}, which "
                + ", ".join(f"{problem.gpu_label(s.host, s.index)} (compute capability "
                            f"{s.compute_capability or 'unknown'})" for s in lacking)
                + " lacks."
            )
    if spec.gpu_count > 1 and len(slots) > 1:
        unlinked = any(b.index not in x.nvlink_peers for i, x in enumerate(slots) for b in slots[i + 1:])
        if unlinked:
            out.append(
                f"{spec.name} splits its model over {_where(problem, keys)}, which are not all joined by NVLink; "
                "tensor-parallel traffic goes over PCIe and decoding is slower."
            )
    smallest = min(slots, key=lambda s: s.capacity_mb, default=None)
    if smallest is None:
        return out
    gpu = f"{problem.gpu_label(smallest.host, smallest.index)} ({fmt_gb(smallest.capacity_mb)})"
    if spec.budget_adjustable:
        estimate = fmt_gb(spec.vram_mb)
        if a.override_mb is not None:
            if spec.share_mb > smallest.capacity_mb:
                out.append(f"{spec.name} budget ({estimate}) exceeds {gpu}; set to {fmt_gb(a.override_mb)} as you "
                           "asked. Some of its models may not load.")
            if spec.min_vram_mb is not None and a.override_mb < spec.min_vram_mb:
                out.append(f"{spec.name} budget of {fmt_gb(a.override_mb)} is below its minimum "
                           f"({fmt_gb(spec.min_vram_mb)}); some of its models will not load.")
        elif a.budget_mb is not None:
            others = [t for t in _catalog_order(problem, ledger.tenants(smallest.key)) if t.service != spec.name]
            beside = f", which it shares with {', '.join(f'{t.service} ({fmt_gb(t.share_mb)})' for t in others)}"
            at_min = spec.min_vram_mb is not None and a.budget_mb <= spec.min_vram_mb
            floor = " (its minimum)" if at_min else ""
            out.append(f"{spec.name} budget ({estimate}) exceeds {gpu}{beside if others else ''}. Auto-adjusted to "
                       f"{fmt_gb(a.budget_mb)}{floor}; some of its models may not load.")
    elif spec.share_mb > smallest.capacity_mb:
        need = fmt_gb(spec.vram_mb)
        each = f" ({fmt_gb(spec.share_mb)} per GPU)" if spec.gpu_count > 1 else ""
        out.append(f"{spec.label} requires ~{need}{each}, {problem.gpu_label(smallest.host, smallest.index)} "
                   f"only has {fmt_gb(smallest.capacity_mb)}")
    return out


def _catalog_order(problem: Problem, tenants: tuple[Tenant, ...]) -> list[Tenant]:
    """Tenants in catalog order, so a sentence does not depend on the order services were placed in."""
    position = {s.name: i for i, s in enumerate(problem.services)}
    return sorted(tenants, key=lambda t: position.get(t.service, len(position)))


def _load(problem: Problem, ledger: Ledger, key: GpuKey, name: str) -> GpuLoad:
    return GpuLoad(
        host=key.host,
        index=key.index,
        name=name,
        capacity_mb=ledger.capacity(key),
        planned_mb=ledger.planned(key),
        services=tuple(t.service for t in _catalog_order(problem, ledger.tenants(key))),
    )


def _overcommit_warnings(
    problem: Problem,
    ledger: Ledger,
    loads: tuple[GpuLoad, ...],
    specs: dict[str, ServiceSpec],
    assignments: tuple[Assignment, ...],
) -> list[str]:
    out = []
    budgets = {a.service: a.budget_mb for a in assignments}
    for load in loads:
        if not load.overcommitted:
            continue
        if len(load.services) == 1 and not specs[load.services[0]].budget_adjustable:
            continue  # "<model> requires ~X, GPU n only has Y" already says it
        parts = []
        for t in _catalog_order(problem, ledger.tenants(GpuKey(load.host, load.index))):
            spec = specs[t.service]
            size = budgets.get(t.service) if spec.budget_adjustable and budgets.get(t.service) else None
            share = size // spec.gpu_count if size else t.share_mb
            parts.append(f"{t.service} {fmt_gb(share)}")
        out.append(
            f"Combined VRAM (~{fmt_gb(load.planned_mb)}) exceeds {problem.gpu_label(load.host, load.index)} "
            f"capacity ({fmt_gb(load.capacity_mb)}): {', '.join(parts)}"
        )
    return out
