"""A simulated GPU: which model groups sit in its VRAM, what a switch costs, how long a request takes.

Used by the simulated backend and by discrete-event benchmarks, so it is synchronous, reads no
clock and draws randomness only from the ``random.Random`` it is given. VRAM is in MiB; a
catalog's GB are 1024 MiB.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.worker.core.device import MB_PER_GB
from services.worker.core.responses import input_items
from shared.contracts import InferenceKind
from shared.errors import NotFound
from shared.modelgroups import GroupEntry, ModelCatalog

TOKENS_PER_UNIT = 128
"""A chat or completion asking for this many ``max_tokens`` takes the catalog's ``latency_s``."""
MIN_TOKEN_FACTOR = 0.25
MAX_TOKEN_FACTOR = 16.0
EMBEDDING_BASE = 0.75
EMBEDDING_PER_INPUT = 0.25


class UnknownGroup(NotFound):
    """The catalog has no such group (or no group holds the model)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="model")


class GroupTooLarge(NotFound):
    """The group needs more VRAM than the device has for it, even with everything else evicted."""

    def __init__(self, group: str, group_mb: int, capacity_mb: int, vram_mb: int) -> None:
        super().__init__(
            f"model group {group!r} needs {group_mb} MiB of VRAM; this device has {capacity_mb} MiB for models "
            f"({vram_mb} MiB in all)",
            field="model",
        )
        self.group = group
        self.group_mb = group_mb
        self.capacity_mb = capacity_mb


class MustWait(Exception):  # noqa: N818 - a condition to wait on, not a failure
    """The group fits only once groups now serving requests are evicted: wait for them to finish."""

    def __init__(self, group: str, blocking: tuple[str, ...]) -> None:
        super().__init__(f"loading {group!r} must wait for {', '.join(blocking)} to finish serving")
        self.group = group
        self.blocking = blocking


class StalePlan(Exception):  # noqa: N818 - a programming error in the caller's sequencing
    """A plan committed after the GPU changed under it (plan and commit must not interleave)."""


@dataclass(frozen=True)
class LoadPlan:
    """What making ``group`` current takes: nothing (already loaded), or a load after evictions."""

    group: str
    load_s: float
    evict: tuple[str, ...]
    from_cpu_cache: bool
    already_loaded: bool


def group_mb(group: GroupEntry) -> int:
    return math.ceil(group.vram_gb * MB_PER_GB)


def count_inputs(body: Mapping[str, Any]) -> int:
    """Inputs of an embedding body (``input`` is a string or a list of them)."""
    return len(input_items(body))


def size_factor(kind: InferenceKind, bodies: Sequence[Mapping[str, Any]]) -> float:
    """How much bigger than one typical request these bodies are, together.

    chat/completion: ``max_tokens/128`` clamped to [0.25, 16] per body (1 without ``max_tokens``),
    summed. embedding: ``0.75 + 0.25 x`` every input string of every body, so a batch shares the
    fixed cost.
    """
    if kind is InferenceKind.EMBEDDING:
        return EMBEDDING_BASE + EMBEDDING_PER_INPUT * sum(count_inputs(b) for b in bodies)
    total = 0.0
    for body in bodies:
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int | float) and not isinstance(max_tokens, bool) and max_tokens > 0:
            total += min(MAX_TOKEN_FACTOR, max(MIN_TOKEN_FACTOR, max_tokens / TOKENS_PER_UNIT))
        else:
            total += 1.0
    return total


def jitter_factor(rng: random.Random | None, jitter: float) -> float:
    """Lognormal noise with mean 1 (mu = -sigma^2/2), so jitter does not shift the average."""
    if rng is None or jitter <= 0:
        return 1.0
    return rng.lognormvariate(-jitter * jitter / 2, jitter)


class SimGpu:
    """VRAM holding whole model groups, evicted least recently used first, with a CPU-side cache.

    ``used_mb`` is VRAM taken by others (not the worker's to use). Groups evicted from VRAM go to
    a CPU cache of ``max_cpu_cached`` groups (LRU), from which a reload costs only the catalog's
    ``cpu_reload_fraction`` of its load time.
    """

    def __init__(
        self, *, vram_mb: int, speed: float, catalog: ModelCatalog, max_cpu_cached: int, used_mb: int = 0
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.vram_mb = vram_mb
        self.used_mb = used_mb
        self.speed = speed
        self.catalog = catalog
        self.max_cpu_cached = max(0, max_cpu_cached)
        self._loaded: OrderedDict[str, int] = OrderedDict()
        self._cpu: OrderedDict[str, None] = OrderedDict()
        self.current_group: str | None = None
        self.switches = 0

    @property
    def capacity_mb(self) -> int:
        """VRAM the groups may use."""
        return max(0, self.vram_mb - self.used_mb)

    @property
    def loaded(self) -> tuple[str, ...]:
        """Groups in VRAM, least recently used first."""
        return tuple(self._loaded)

    @property
    def cpu_cached(self) -> tuple[str, ...]:
        """Groups in the CPU cache, least recently evicted first."""
        return tuple(self._cpu)

    @property
    def vram_used_mb(self) -> int:
        """VRAM in use on the device: others' plus every loaded group."""
        return self.used_mb + sum(self._loaded.values())

    def _group(self, group: str) -> GroupEntry:
        entry = self.catalog.group(group)
        if entry is None:
            raise UnknownGroup(f"model group {group!r} is not in the model-group catalog")
        return entry

    def can_hold(self, group: str) -> bool:
        """Whether the group fits this device at all (with everything else evicted)."""
        entry = self.catalog.group(group)
        return entry is not None and group_mb(entry) <= self.capacity_mb

    def holdable_groups(self) -> tuple[str, ...]:
        return tuple(g.id for g in self.catalog.groups if group_mb(g) <= self.capacity_mb)

    def holdable_models(self) -> tuple[str, ...]:
        """Every model of every group this device can hold: what it may serve."""
        return tuple(m.id for g in self.catalog.groups if group_mb(g) <= self.capacity_mb for m in g.models)

    def plan_load(self, group: str, in_use: Collection[str] = ()) -> LoadPlan:
        """What making ``group`` current takes; evicts the least recently used groups not in ``in_use``.

        Raises ``UnknownGroup``, ``GroupTooLarge``, or ``MustWait`` when only evicting groups in
        use would make room.
        """
        entry = self._group(group)
        need = group_mb(entry)
        if need > self.capacity_mb:
            raise GroupTooLarge(group, need, self.capacity_mb, self.vram_mb)
        if group in self._loaded:
            return LoadPlan(group=group, load_s=0.0, evict=(), from_cpu_cache=False, already_loaded=True)
        free = self.capacity_mb - sum(self._loaded.values())
        evict: list[str] = []
        for candidate, size in self._loaded.items():
            if free >= need:
                break
            if candidate in in_use:
                continue
            evict.append(candidate)
            free += size
        if free < need:
            raise MustWait(group, tuple(g for g in self._loaded if g in in_use))
        cached = group in self._cpu
        load_s = entry.load_time_s * (self.catalog.cpu_reload_fraction if cached else 1.0)
        return LoadPlan(group=group, load_s=load_s, evict=tuple(evict), from_cpu_cache=cached, already_loaded=False)

    def commit(self, plan: LoadPlan) -> None:
        """Apply a plan: evicted groups go to the CPU cache, the group is loaded and current."""
        if plan.already_loaded:
            if plan.group not in self._loaded:
                raise StalePlan(f"{plan.group!r} was planned as loaded but is not")
            self.touch(plan.group)
            return
        if plan.group in self._loaded:
            raise StalePlan(f"{plan.group!r} is loaded already")
        missing = [g for g in plan.evict if g not in self._loaded]
        if missing:
            raise StalePlan(f"planned evictions {missing} are no longer loaded")
        need = group_mb(self._group(plan.group))
        free_after = self.capacity_mb - sum(s for g, s in self._loaded.items() if g not in plan.evict)
        if free_after < need:
            raise StalePlan(f"{plan.group!r} no longer fits after the planned evictions")
        for evicted in plan.evict:
            del self._loaded[evicted]
            self._cpu.pop(evicted, None)
            self._cpu[evicted] = None
            if self.current_group == evicted:
                self.current_group = None
        while len(self._cpu) > self.max_cpu_cached:
            self._cpu.popitem(last=False)
        self._cpu.pop(plan.group, None)
        self._loaded[plan.group] = need
        self.current_group = plan.group
        self.switches += 1

    def touch(self, group: str) -> None:
        """A request used ``group``: most recently used, and current."""
        if group not in self._loaded:
            raise StalePlan(f"{group!r} is not loaded")
        self._loaded.move_to_end(group)
        self.current_group = group

    def service_s(
        self,
        model: str,
        kind: InferenceKind,
        body: Mapping[str, Any],
        batch: int = 1,
        rng: random.Random | None = None,
        jitter: float = 0.0,
    ) -> float:
        """Time to serve ``batch`` requests like ``body``: latency x size / speed, with lognormal jitter."""
        return self.bodies_service_s(model, kind, [body] * max(1, batch), rng, jitter)

    def bodies_service_s(
        self,
        model: str,
        kind: InferenceKind,
        bodies: Sequence[Mapping[str, Any]],
        rng: random.Random | None = None,
        jitter: float = 0.0,
    ) -> float:
        """Time to serve these bodies together (one task)."""
        entry = self.catalog.model(model)
        if entry is None:
            raise UnknownGroup(f"model {model!r} is not in the model-group catalog")
        return entry.latency_s * size_factor(kind, bodies) * jitter_factor(rng, jitter) / self.speed
