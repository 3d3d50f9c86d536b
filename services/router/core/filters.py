"""Placement filters: which workers a request may go to, one small rule each.

Like the Kubernetes scheduler's Filter plugins: a filter looks at one worker record and the request
and returns None (the worker stays) or the reason it is left out, in the words the router's
``Wait.reasons`` and state page show. ``Pools.place`` runs ``DEFAULT_FILTERS`` in order and
keeps the first reason; what the refusal means for the waiting request is the filter's ``EXCLUDES``.
Pure: the pools' tables and ``now`` come in, nothing is changed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar, Protocol

from services.router.core.circuit import CircuitState
from shared.contracts import WorkerState

if TYPE_CHECKING:  # pools.py imports this module for its default filters
    from services.router.core.model import PlacementRequest
    from services.router.core.pools import Pools, WorkerRecord


class Exclusion(StrEnum):
    """What a filter's refusal says about the worker, for the request waiting."""

    UNRELATED = "unrelated"
    """Not in this request's pool at all (another model): not listed among the reasons to wait."""
    DOWN = "down"
    """Takes no work at all now (gone, not ready, sick GPU, open circuit): a request that only such
    workers could take is stuck, and gives up after a while."""
    BUSY = "busy"
    """Up, but not for this request now (held for an exclusive request, failed it already)."""


class Filter(Protocol):
    """One placement rule. ``request`` None asks about any request (the state page's ``why_not``):
    a rule about the request itself then keeps the worker."""

    NAME: ClassVar[str]
    EXCLUDES: ClassVar[Exclusion]

    def reason(
        self, pools: Pools, record: WorkerRecord, request: PlacementRequest | None, now: float
    ) -> str | None: ...


class ServesModel:
    """The worker offers the model, or holds its group (and so can serve any model of it)."""

    NAME: ClassVar[str] = "serves_model"
    EXCLUDES: ClassVar[Exclusion] = Exclusion.UNRELATED

    def reason(self, pools: Pools, record: WorkerRecord, request: PlacementRequest | None, now: float) -> str | None:
        if request is None or pools.serves(record, request):
            return None
        return f"does not serve {request.model} (nor holds {request.group})"


class Alive:
    """Not stopped, and heard from within the worker timeout."""

    NAME: ClassVar[str] = "alive"
    EXCLUDES: ClassVar[Exclusion] = Exclusion.DOWN

    def reason(self, pools: Pools, record: WorkerRecord, request: PlacementRequest | None, now: float) -> str | None:
        if pools.alive(record, now):
            return None
        return "stopped" if record.status.state is WorkerState.STOPPED else f"silent for {now - record.seen_at:.1f} s"


class Ready:
    """Reports itself ready (not starting, loading or draining)."""

    NAME: ClassVar[str] = "ready"
    EXCLUDES: ClassVar[Exclusion] = Exclusion.DOWN

    def reason(self, pools: Pools, record: WorkerRecord, request: PlacementRequest | None, now: float) -> str | None:
        state = record.status.state
        return None if state is WorkerState.READY else state.value


class GpuHealthy:
    """The detector finds its GPU healthy (CPU workers and workers without a GPU index pass)."""

    NAME: ClassVar[str] = "gpu_healthy"
    EXCLUDES: ClassVar[Exclusion] = Exclusion.DOWN

    def reason(self, pools: Pools, record: WorkerRecord, request: PlacementRequest | None, now: float) -> str | None:
        healthy, why = pools.gpu_ok(record)
        return None if healthy else f"GPU unhealthy ({why or 'reported by the detector'})"


class CircuitClosed:
    """Its circuit breaker lets a request through (closed, or half-open with no probe out)."""

    NAME: ClassVar[str] = "circuit_closed"
    EXCLUDES: ClassVar[Exclusion] = Exclusion.DOWN

    def reason(self, pools: Pools, record: WorkerRecord, request: PlacementRequest | None, now: float) -> str | None:
        if record.circuit.allows(now):
            return None
        return "circuit open" if record.circuit.state(now) is CircuitState.OPEN else "circuit half-open, probe out"


class NotHeldExclusively:
    """No exclusive request holds or waits for its GPU (that one request alone goes there)."""

    NAME: ClassVar[str] = "not_held_exclusively"
    EXCLUDES: ClassVar[Exclusion] = Exclusion.BUSY

    def reason(self, pools: Pools, record: WorkerRecord, request: PlacementRequest | None, now: float) -> str | None:
        holder = pools.held_by(record)
        return None if holder is None else f"GPU held exclusively for request {holder}"


class NotAvoided:
    """The request has not failed on this worker already (a retry goes elsewhere)."""

    NAME: ClassVar[str] = "not_avoided"
    EXCLUDES: ClassVar[Exclusion] = Exclusion.BUSY

    def reason(self, pools: Pools, record: WorkerRecord, request: PlacementRequest | None, now: float) -> str | None:
        if request is None or record.status.worker_id not in request.avoid:
            return None
        return "failed this request already"


DEFAULT_FILTERS: tuple[Filter, ...] = (
    ServesModel(),
    Alive(),
    Ready(),
    GpuHealthy(),
    CircuitClosed(),
    NotHeldExclusively(),
    NotAvoided(),
)
"""In order; the first refusal is the reason shown, so the most fundamental come first (a stopped
worker is "stopped", not also "draining" or "circuit open")."""


def first_refusal(
    filters: tuple[Filter, ...], pools: Pools, record: WorkerRecord, request: PlacementRequest | None, now: float
) -> tuple[Filter, str] | None:
    """The first filter that leaves ``record`` out, with its reason; None when every one keeps it."""
    for rule in filters:
        why = rule.reason(pools, record, request, now)
        if why is not None:
            return rule, why
    return None
