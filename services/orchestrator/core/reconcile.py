"""Compare what each service should run with what its container runs: the level-triggered heart."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from services.orchestrator.core.model import MANAGED_ENV, ContainerView, ServiceTarget


def describe_devices(ids: Sequence[str]) -> str:
    return ", ".join(ids) if ids else "no GPU"


def _ids(ids: Sequence[str]) -> str:
    return ", ".join(ids) if ids else "none"


def mismatches(target: ServiceTarget, container: ContainerView) -> list[str]:
    """Why ``container`` does not run ``target`` (empty: it does)."""
    reasons: list[str] = []
    managed_before = container.target_digest is not None
    # A GPU from the base compose file on a service gpuplane does not place is the user's choice.
    base_file_gpu = target.empty and not managed_before
    if sorted(container.device_ids) != sorted(target.device_ids) and not base_file_gpu:
        reasons.append(f"GPU {_ids(container.device_ids)} -> {_ids(target.device_ids)}")
    wanted = target.env_map
    for key in MANAGED_ENV:
        have = container.env.get(key)
        want = wanted.get(key)
        # Without our label the container predates gpuplane: its own environment is the base file's business.
        if want is None and not managed_before:
            continue
        if have != want:
            reasons.append(f"{key} {have if have is not None else 'unset'} -> {want if want is not None else 'unset'}")
    if any(r.startswith("GPU ") for r in reasons):
        # Follows from the GPU change; saying it again only buries the reason.
        reasons = [r for r in reasons if not r.startswith("GPUPLANE_ASSIGNED_GPUS ")]
    if not reasons:
        if target.empty and managed_before:
            reasons.append("GPU assignment removed")
        elif not target.empty and container.target_digest != target.digest:
            reasons.append("not applied by gpuplane yet")
    return reasons


@dataclass(frozen=True)
class Change:
    """One service whose container must be recreated, and why."""

    service: str
    reason: str
    devices_before: tuple[str, ...]
    devices_after: tuple[str, ...]
    container: str


@dataclass(frozen=True)
class Reconciliation:
    changes: tuple[Change, ...]
    notes: tuple[str, ...]


def scope(
    targets: Mapping[str, ServiceTarget],
    previous: Mapping[str, ServiceTarget],
    containers: Sequence[ContainerView],
) -> dict[str, ServiceTarget]:
    """Every service gpuplane answers for: targeted now, targeted before, or labelled as ours.

    A service that leaves the configuration gets an empty target, so it loses the GPU it had.
    """
    result = dict(targets)
    labelled = sorted({c.service for c in containers if c.target_digest is not None})
    for name in [*previous, *labelled]:
        result.setdefault(name, ServiceTarget.of(name))
    return result


def reconcile(
    targets: Mapping[str, ServiceTarget],
    containers: Sequence[ContainerView],
    project_services: Collection[str],
) -> Reconciliation:
    """The services whose containers differ from their targets, in the targets' order."""
    by_service: dict[str, list[ContainerView]] = {}
    for container in containers:
        by_service.setdefault(container.service, []).append(container)
    changes: list[Change] = []
    notes: list[str] = []
    for name, target in targets.items():
        if name not in project_services:
            if not target.empty:
                notes.append(f"{name} is in the configuration but not in the compose project: skipped")
            continue
        found = by_service.get(name, [])
        if not found:
            if not target.empty:
                notes.append(f"{name} has no container (not started?): it gets its GPU when started with the override")
            continue
        for container in found:
            reasons = mismatches(target, container)
            if reasons:
                changes.append(
                    Change(name, "; ".join(reasons), tuple(container.device_ids), target.device_ids, container.id)
                )
                break
    return Reconciliation(tuple(changes), tuple(notes))


def dependents(service: str, depends_on: Mapping[str, Collection[str]]) -> set[str]:
    """Services that depend on ``service``, directly or not (compose recreates them along with it)."""
    found: set[str] = set()
    frontier = [service]
    while frontier:
        current = frontier.pop()
        for name, needs in depends_on.items():
            if current in needs and name not in found and name != service:
                found.add(name)
                frontier.append(name)
    return found


def verify_devices(
    target: ServiceTarget, container: ContainerView, cdi_env: Mapping[str, Mapping[str, str]]
) -> str | None:
    """Trust, but verify: did the container really get the GPUs it was assigned? None when it did.

    ``cdi_env`` is the environment the CDI spec injects for each device name; where the spec sets
    any, the container must carry it (proof the runtime applied the device, not just recorded it).
    """
    if sorted(container.device_ids) != sorted(target.device_ids):
        return (
            f"asked for {describe_devices(target.device_ids)}, the container got "
            f"{describe_devices(container.device_ids)} (the compose command or the engine dropped the device)"
        )
    for device in target.device_ids:
        for key, value in (cdi_env.get(device) or {}).items():
            if key == "NVIDIA_VISIBLE_DEVICES" and len(target.device_ids) > 1:
                continue  # several devices each set it; the runtime keeps one value
            if container.env.get(key) != value:
                return (
                    f"the CDI spec's edits for nvidia.com/gpu={device} are missing from the container "
                    f"({key}={container.env.get(key, 'unset')}, expected {value})"
                )
    return None
