"""The simulated backend: a ``SimGpu`` in real time, with OpenAI-shaped answers.

A group load occupies the whole device (no other slot starts serving while it runs), and a
load that needs a group still serving requests waits for them; while it waits, requests for
groups already loaded wait too, so a busy group cannot starve a switch.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import ClassVar

from services.worker.backends.base import BackendConfig, ChunkSink, Execution, LoadResult
from services.worker.core.responses import simulated_body, stream_chunks
from services.worker.core.simgpu import GroupTooLarge, LoadPlan, MustWait, SimGpu, UnknownGroup, group_mb
from services.worker.core.status import BackendState
from shared.contracts import WorkerTask
from shared.errors import ConfigError, NotFound, OperationFailed

log = logging.getLogger("gpuplane.worker.simulated")


class SimulatedBackend:
    NAME: ClassVar[str] = "simulated"

    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        profile = config.profile
        self._gpu = SimGpu(
            vram_mb=profile.vram_total_mb,
            speed=profile.speed,
            catalog=config.catalog,
            max_cpu_cached=config.max_cpu_cached,
            used_mb=profile.vram_used_mb,
        )
        self._rng = random.Random(config.seed)
        self._cond = asyncio.Condition()
        self._loading = False
        self._switches_waiting = 0
        self._in_use: Counter[str] = Counter()

    @property
    def gpu(self) -> SimGpu:
        return self._gpu

    async def start(self) -> None:
        """Nothing to prepare."""

    async def maintain(self) -> None:
        """Nothing to keep up."""

    async def close(self) -> None:
        """Nothing to release."""

    def group_for(self, model: str) -> str:
        entry = self._config.catalog.group_of(model)
        if entry is None:
            raise NotFound(
                f"model {model!r} is not in the model-group catalog of worker {self._config.worker_id}", field="model"
            )
        if not self._gpu.can_hold(entry.id):
            raise GroupTooLarge(entry.id, group_mb(entry), self._gpu.capacity_mb, self._gpu.vram_mb)
        return entry.id

    def check_group(self, group: str) -> None:
        try:
            self._gpu.plan_load(group)
        except (UnknownGroup, GroupTooLarge) as exc:
            raise ConfigError(f"the default group cannot be loaded on {self._config.profile.device}: {exc}") from exc

    async def preload(self, group: str) -> LoadResult:
        plan = await self._acquire(group)
        await self._release(group)
        return _result(plan)

    async def execute(self, task: WorkerTask, emit: ChunkSink | None) -> Execution:
        group = self.group_for(task.model)
        device = self._config.profile.device
        plan = await self._acquire(group)
        try:
            if self._config.fail_rate > 0 and self._rng.random() < self._config.fail_rate:
                raise OperationFailed(f"simulated failure on {device} (GPUPLANE_FAIL_RATE={self._config.fail_rate:g})")
            service_s = self._gpu.bodies_service_s(
                task.model, task.kind, task.bodies, self._rng, self._config.latency_jitter
            )
            created = int(self._config.wall_clock())
            if emit is not None:
                chunks = stream_chunks(task.kind, task.request_ids[0], task.model, device, task.bodies[0], created)
                for chunk in chunks:
                    await asyncio.sleep(service_s / len(chunks))
                    await emit(chunk)
                bodies: tuple[dict[str, object], ...] = ({},)
            else:
                await asyncio.sleep(service_s)
                bodies = tuple(
                    simulated_body(task.kind, request_id, task.model, device, body, created)
                    for request_id, body in zip(task.request_ids, task.bodies, strict=True)
                )
        finally:
            await self._release(group)
        return Execution(bodies=bodies, load=_result(plan), service_s=service_s)

    async def _acquire(self, group: str) -> LoadPlan:
        """Make ``group`` loaded and current, and count it in use until ``_release``."""
        async with self._cond:
            waiting = False
            try:
                while True:
                    if self._loading:
                        await self._cond.wait()
                        continue
                    try:
                        plan = self._gpu.plan_load(group, in_use=set(self._in_use))
                    except MustWait as exc:
                        if not waiting:
                            waiting = True
                            self._switches_waiting += 1
                            log.debug("%s", exc)
                        await self._cond.wait()
                        continue
                    others_waiting = self._switches_waiting - (1 if waiting else 0)
                    if plan.already_loaded and others_waiting > 0:
                        await self._cond.wait()
                        continue
                    break
            finally:
                if waiting:
                    self._switches_waiting -= 1
                    self._cond.notify_all()
            if plan.already_loaded:
                self._gpu.touch(group)
                self._in_use[group] += 1
                return plan
            self._gpu.commit(plan)
            self._loading = True
        self._config.on_change()
        log.info(
            "loading group %s on %s from %s (%.2f s)%s",
            group,
            self._config.profile.device,
            "the CPU cache" if plan.from_cpu_cache else "disk",
            plan.load_s,
            f", evicting {', '.join(plan.evict)}" if plan.evict else "",
        )
        loaded = False
        try:
            await asyncio.sleep(plan.load_s)
            loaded = True
        finally:
            async with self._cond:
                self._loading = False
                if loaded:
                    self._in_use[group] += 1
                self._cond.notify_all()
        self._config.on_load(_result(plan))
        self._config.on_change()
        return plan

    async def _release(self, group: str) -> None:
        async with self._cond:
            self._in_use[group] -= 1
            if self._in_use[group] <= 0:
                del self._in_use[group]
            self._cond.notify_all()

    def state(self) -> BackendState:
        return BackendState(
            groups_loaded=self._gpu.loaded,
            current_group=self._gpu.current_group,
            cpu_cached_groups=self._gpu.cpu_cached,
            models=self._gpu.holdable_models(),
            vram_used_mb=self._gpu.vram_used_mb,
        )


def _result(plan: LoadPlan) -> LoadResult:
    return LoadResult(
        group=plan.group,
        loaded=not plan.already_loaded,
        from_cpu_cache=plan.from_cpu_cache,
        load_s=plan.load_s,
    )
