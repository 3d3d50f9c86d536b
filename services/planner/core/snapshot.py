"""Building a :class:`Problem` from what the bus and the store hold, and checking user requests."""

from __future__ import annotations

from collections.abc import Sequence

from services.planner.core.model import GpuSlot, Pin, Problem, ServiceSpec, mb
from services.planner.core.speed import estimate_tflops
from shared.contracts import AssignmentRequest, Inventory, ServiceAssignment
from shared.errors import InvalidRequest


def slots_from(inventories: Sequence[Inventory]) -> tuple[GpuSlot, ...]:
    """Every GPU of every host, hosts in name order, GPUs in index order."""
    slots = []
    for inv in sorted(inventories, key=lambda i: i.host):
        for gpu in sorted(inv.gpus, key=lambda g: g.index):
            speed, basis = estimate_tflops(gpu)
            slots.append(
                GpuSlot(
                    host=inv.host,
                    index=gpu.index,
                    uuid=gpu.uuid,
                    name=gpu.name,
                    capacity_mb=gpu.vram_total_mb,
                    speed=speed,
                    speed_basis=basis,
                    nvlink_peers=frozenset(gpu.nvlink_peers),
                    supports_fp16=gpu.supports_fp16,
                    supports_bf16=gpu.supports_bf16,
                    compute_capability=gpu.compute_capability,
                    healthy=gpu.healthy,
                    health_reason=gpu.health_reason,
                )
            )
    return tuple(slots)


def pins_from_requests(
    requests: Sequence[AssignmentRequest], catalog: Sequence[ServiceSpec], gpus: Sequence[GpuSlot]
) -> tuple[Pin, ...]:
    """Check a PUT's assignments against the catalog; ``InvalidRequest`` names the field at fault."""
    specs = {s.name: s for s in catalog}
    hosts = tuple(dict.fromkeys(g.host for g in gpus))
    seen: dict[str, int] = {}
    pins = []
    for i, req in enumerate(requests):
        at = f"assignments.{i}"
        spec = specs.get(req.service)
        if spec is None:
            raise InvalidRequest(
                f"unknown service {req.service!r}; the catalog has: {', '.join(specs)}", f"{at}.service"
            )
        if req.service in seen:
            raise InvalidRequest(
                f"{req.service} is listed twice (also at assignments.{seen[req.service]})", f"{at}.service"
            )
        seen[req.service] = i
        indices = _indices(req, spec, at)
        if req.vram_budget_override is not None and not spec.budget_adjustable:
            raise InvalidRequest(
                f"{req.service} has no adjustable VRAM budget (its catalog entry does not set budget_adjustable)",
                f"{at}.vram_budget_override",
            )
        host = req.host
        if indices is not None and host is None:
            if len(hosts) > 1:
                raise InvalidRequest(
                    f"several hosts have GPUs ({', '.join(hosts)}): say which one {req.service} goes on",
                    f"{at}.host",
                )
            host = hosts[0] if hosts else None
        budget = mb(req.vram_budget_override) if req.vram_budget_override is not None else None
        pins.append(Pin(req.service, indices, host, budget, req.enabled))
    return tuple(pins)


def _indices(req: AssignmentRequest, spec: ServiceSpec, at: str) -> tuple[int, ...] | None:
    if req.gpu_index is not None and req.gpu_indices is not None:
        raise InvalidRequest("give gpu_index or gpu_indices, not both", f"{at}.gpu_indices")
    if req.gpu_indices is not None:
        indices = req.gpu_indices
        if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
            raise InvalidRequest("GPU indices must be distinct and not negative", f"{at}.gpu_indices")
        if len(indices) != spec.gpu_count:
            raise InvalidRequest(
                f"{spec.name} needs {spec.gpu_count} GPU(s); {len(indices)} given", f"{at}.gpu_indices"
            )
        return tuple(indices)
    if req.gpu_index is not None:
        if spec.gpu_count > 1:
            raise InvalidRequest(
                f"{spec.name} needs {spec.gpu_count} GPUs on one host: give gpu_indices", f"{at}.gpu_index"
            )
        return (req.gpu_index,)
    return None


def pins_from_saved(assignments: Sequence[ServiceAssignment]) -> tuple[Pin, ...]:
    """The saved configuration as pins: every placed service stays where it is."""
    return tuple(
        Pin(
            a.service,
            a.gpu_indices or None,
            a.host,
            mb(a.vram_budget_override) if a.vram_budget_override is not None else None,
            a.enabled,
        )
        for a in assignments
    )


def make_problem(
    inventories: Sequence[Inventory], catalog: Sequence[ServiceSpec], pins: Sequence[Pin] = (), headroom_gb: float = 0.5
) -> Problem:
    return Problem(gpus=slots_from(inventories), services=tuple(catalog), pins=tuple(pins), headroom_mb=mb(headroom_gb))
