"""Pure detector logic: precision support, inventory diffs and when to publish.

No I/O and no clock here: time comes in as arguments, so every rule is testable as a table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from shared.contracts import Gpu, Inventory, InventoryChange, InventoryChangeKind, InventorySource

if TYPE_CHECKING:
    # Type only: importing the backends package at run time would import core back (cycle).
    from services.detector.backends.base import HostScan

_CC = re.compile(r"^(\d+)\.(\d+)$")
_FP16_FROM = (5, 3)
_BF16_FROM = (8, 0)
_KIND_ORDER = {kind: position for position, kind in enumerate(InventoryChangeKind)}


def precision_support(compute_capability: str | None) -> tuple[bool, bool]:
    """(fp16, bf16) native support for a CUDA compute capability like ``"8.6"``.

    fp16 arithmetic is native from 5.3, bf16 from 8.0 (Ampere). Unknown or malformed -> (False, False).
    """
    if compute_capability is None:
        return (False, False)
    match = _CC.match(compute_capability.strip())
    if match is None:
        return (False, False)
    version = (int(match.group(1)), int(match.group(2)))
    return (version >= _FP16_FROM, version >= _BF16_FROM)


def diff_gpus(previous: tuple[Gpu, ...] | None, current: tuple[Gpu, ...]) -> tuple[InventoryChange, ...]:
    """What changed between two scans of one host, keyed by GPU uuid and ordered by index.

    ``previous=None`` (the first scan) yields nothing: there is no baseline to differ from.
    Only presence and health count; utilization, memory or temperature moving is not a change.
    """
    if previous is None:
        return ()
    before = {gpu.uuid: gpu for gpu in previous}
    after = {gpu.uuid: gpu for gpu in current}
    changes: list[InventoryChange] = []
    for uuid, gpu in after.items():
        old = before.get(uuid)
        if old is None:
            changes.append(_change(InventoryChangeKind.APPEARED, gpu, gpu.health_reason))
        elif old.healthy and not gpu.healthy:
            changes.append(_change(InventoryChangeKind.UNHEALTHY, gpu, gpu.health_reason))
        elif not old.healthy and gpu.healthy:
            changes.append(_change(InventoryChangeKind.RECOVERED, gpu, None))
    for uuid, gpu in before.items():
        if uuid not in after:
            changes.append(_change(InventoryChangeKind.DISAPPEARED, gpu, None))
    changes.sort(key=lambda c: (c.index, _KIND_ORDER[c.kind], c.uuid))
    return tuple(changes)


def _change(kind: InventoryChangeKind, gpu: Gpu, reason: str | None) -> InventoryChange:
    return InventoryChange(kind=kind, uuid=gpu.uuid, index=gpu.index, name=gpu.name, reason=reason)


@dataclass
class _HostState:
    gpus: tuple[Gpu, ...]
    source: InventorySource
    problems: tuple[str, ...]
    published_at_s: float
    sequence: int


class PublishDecider:
    """Decides, per host, when a scan becomes a published ``Inventory``.

    Publishes at once when the GPU set, a GPU's health, the source or the problems changed;
    otherwise at most every ``interval_s``. Each published inventory of a host carries a
    sequence number one higher than the previous one (the first is 1).
    """

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._hosts: dict[str, _HostState] = {}

    def observe(self, scan: HostScan, now_s: float, at: datetime) -> Inventory | None:
        """The inventory to publish for this scan, or None when nothing changed and none is due.

        ``now_s`` is a monotonic clock reading; ``at`` becomes ``Inventory.detected_at``.
        """
        state = self._hosts.get(scan.host)
        changes = diff_gpus(state.gpus if state else None, scan.gpus)
        due = (
            state is None
            or bool(changes)
            or state.source != scan.source
            or state.problems != scan.problems
            or now_s - state.published_at_s >= self._interval_s
        )
        if not due:
            return None
        return self._publish(scan, now_s, at, changes)

    def force(self, scan: HostScan, now_s: float, at: datetime) -> Inventory:
        """Always publish (a rescan was requested), still diffing and sequencing."""
        state = self._hosts.get(scan.host)
        changes = diff_gpus(state.gpus if state else None, scan.gpus)
        return self._publish(scan, now_s, at, changes)

    def _publish(
        self, scan: HostScan, now_s: float, at: datetime, changes: tuple[InventoryChange, ...]
    ) -> Inventory:
        state = self._hosts.get(scan.host)
        sequence = state.sequence + 1 if state else 1
        self._hosts[scan.host] = _HostState(
            gpus=scan.gpus,
            source=scan.source,
            problems=scan.problems,
            published_at_s=now_s,
            sequence=sequence,
        )
        return Inventory(
            host=scan.host,
            source=scan.source,
            gpus=scan.gpus,
            detected_at=at,
            sequence=sequence,
            changes=changes,
            problems=scan.problems,
            fleet_file=scan.fleet_file,
        )
