"""What placement decides over: frozen snapshots of workers and of the request being placed."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field

from services.router.core.prefix import PrefixKey
from shared.contracts import InferenceKind, Priority, Route

CPU_DEVICE = "cpu"


@dataclass(frozen=True)
class WorkerSnapshot:
    """One worker at the moment of a decision, with the load every router agrees on.

    ``load`` is what the worker last reported (running plus queued) plus what this router sent it
    since; it is the same figure on every router but for those few messages in flight.
    """

    worker_id: str
    host: str
    device: str
    slots: int
    load: int
    groups_loaded: frozenset[str] = frozenset()
    cpu_cached_groups: frozenset[str] = frozenset()
    current_group: str | None = None
    latency_avg_s: float = 0.0
    """Measured time per request on this worker; 0 until it has served one."""
    speed: float = 1.0
    """The device's speed relative to the reference GPU: until it has measured, the catalog's guess over this."""
    error_rate: float = 0.0
    has_room: bool = True
    """Below its admission limit (slots plus the per-worker queue the router allows)."""
    service_s: float = 0.0
    """This request's expected time alone here (learned per model, else a prior); 0: not estimated."""
    backlog_s: float | None = None
    """Expected time alone of everything it runs and queues, summed per model; None: ``load`` x this request's."""
    coming_load_s: float = 0.0
    """Group loads it will do for requests already sent there (a load holds the whole device)."""
    groups_coming: frozenset[str] = frozenset()
    """Groups it will load for requests already sent there, that fit beside what it holds."""
    batching: float = 0.0
    """Slowdown per further running request (``estimates.BATCHING_SLOWDOWN`` for batching engines, else 0)."""
    kv_cache_usage: float | None = None
    """The engine's KV cache in use (0..1), where it says."""
    vram_free_mb: int | None = None
    """VRAM not taken by what it holds, where it says: a group larger than this evicts another to load."""
    prefix_chars: int = 0
    """Characters of this request's prompt it was last sent (likely still in its cache); 0: none."""

    @property
    def is_cpu(self) -> bool:
        return self.device == CPU_DEVICE


@dataclass(frozen=True)
class PlacementRequest:
    """The facts about a request (or an embedding batch) that placement looks at."""

    request_id: str
    kind: InferenceKind
    model: str
    group: str
    priority: Priority = Priority.NORMAL
    group_load_s: float = 5.0
    """How long loading the group takes from disk (the catalog's figure)."""
    cpu_reload_fraction: float = 0.2
    expected_latency_s: float = 0.5
    """The catalog's guess for one request, used for workers that have not measured any yet."""
    small: bool = False
    """Marked small in the catalog: may fall back to a CPU worker."""
    avoid: frozenset[str] = frozenset()
    """Workers that already failed this request (a retry goes elsewhere)."""
    attempt: int = 1
    """Above 1 the request was sent before (its worker failed or died): the route says ``retry``."""
    prompt_tokens: float = 0.0
    """The prompt's size, estimated from its characters."""
    max_tokens: int | None = None
    prefix: tuple[PrefixKey, ...] = ()
    """Keys of the prompt's long prefixes, longest first (``core.prefix``); empty: no prefix affinity."""
    group_vram_mb: int = 0
    """VRAM its group takes (the catalog's); 0: unknown."""


@dataclass(frozen=True)
class Choice:
    """A policy's pick and its reason, for the logs and the response headers."""

    worker_id: str
    route: Route
    reason: str


@dataclass(frozen=True)
class Placement:
    """Send the request to ``worker_id`` now."""

    worker_id: str
    route: Route
    reason: str
    exclusive_device: str | None = None


@dataclass(frozen=True)
class Wait:
    """Nobody can take it now; keep it queued. ``reasons`` say why, per worker."""

    reasons: tuple[str, ...] = ()
    stuck: bool = False
    """No worker that could take it is up at all (not merely busy): the caller gives up after a while."""


@dataclass(frozen=True)
class Infeasible:
    """No worker can ever take it as asked (an unknown model or device): answer the client now."""

    reason: str
    field: str
    not_found: bool = True
    reasons: tuple[str, ...] = dc_field(default_factory=tuple)


Decision = Placement | Wait | Infeasible
