"""Builders for the worker's tests: a tiny catalog with fast groups, settings and tasks, and a worker
service running on the in-memory bus."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.worker.service import start_for
from services.worker.settings import WorkerSettings
from shared.bus.base import Bus
from shared.bus.memory import MemoryBus
from shared.contracts import InferenceKind, Priority, ServiceName, WorkerResult, WorkerStatus, WorkerTask
from shared.modelgroups import ModelCatalog
from shared.service import ServiceContext, serve
from shared.subjects import WORKER_STATUS_ALL, matches, worker_task

HOST = "box"

# Latencies are tiny so that service tests run in milliseconds; sizes mirror config/model_groups.yml.
CATALOG: dict[str, Any] = {
    "cpu_reload_fraction": 0.2,
    "groups": [
        {
            "id": "big",
            "vram_gb": 16,
            "load_time_s": 0.02,
            "models": [
                {"id": "big-chat", "kind": "chat", "latency_s": 0.01},
                {"id": "big-text", "kind": "completion", "latency_s": 0.01},
            ],
        },
        {"id": "other", "vram_gb": 15, "load_time_s": 0.02, "models": [{"id": "other-chat", "latency_s": 0.01}]},
        {"id": "small", "vram_gb": 3, "load_time_s": 0.02, "models": [{"id": "small-chat", "latency_s": 0.01}]},
        {
            "id": "embed",
            "vram_gb": 1,
            "load_time_s": 0.02,
            "models": [
                {"id": "embed-a", "kind": "embedding", "latency_s": 0.01},
                {"id": "embed-b", "kind": "embedding", "latency_s": 0.01},
            ],
        },
        {"id": "huge", "vram_gb": 40, "load_time_s": 0.02, "models": [{"id": "huge-chat", "latency_s": 0.01}]},
    ],
}


def make_catalog(**changes: Any) -> ModelCatalog:
    return ModelCatalog.model_validate({**CATALOG, **changes})


def write_catalog(directory: Path, **changes: Any) -> Path:
    path = directory / "model_groups.yml"
    path.write_text(yaml.safe_dump({**CATALOG, **changes}))
    return path


_task_ids = itertools.count(1)


def make_task(
    model: str = "big-chat",
    *,
    kind: InferenceKind = InferenceKind.CHAT,
    bodies: tuple[dict[str, Any], ...] | None = None,
    group: str = "big",
    priority: Priority = Priority.NORMAL,
    exclusive: bool = False,
    stream_subject: str | None = None,
    text: str = "hello there",
    max_tokens: int | None = None,
) -> WorkerTask:
    """A task for one chat request by default; ``bodies`` makes a batch (one request id each)."""
    if bodies is None:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        bodies = (body,)
    number = next(_task_ids)
    return WorkerTask(
        task_id=f"t{number}",
        request_ids=tuple(f"r{number}-{i}" for i in range(len(bodies))),
        kind=kind,
        model=model,
        group=group,
        bodies=bodies,
        priority=priority,
        exclusive=exclusive,
        stream_subject=stream_subject,
    )


@dataclass
class RunningWorker:
    bus: MemoryBus
    ctx: ServiceContext
    task: asyncio.Task[None]
    settings: WorkerSettings

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id or ""

    @property
    def engine_url(self) -> str:
        """The engine's base URL as the worker's statuses advertise it."""
        url = self.statuses()[-1].engine_url
        assert url is not None, "this worker advertises no engine"
        return url

    def statuses(self) -> list[WorkerStatus]:
        """This worker's statuses (others may share the bus)."""
        return [
            m
            for s, m in self.bus.published
            if matches(WORKER_STATUS_ALL, s) and isinstance(m, WorkerStatus) and m.worker_id == self.worker_id
        ]

    async def wait_status(self, check: Callable[[WorkerStatus], bool], timeout_s: float = 5.0) -> WorkerStatus:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            for status in self.statuses():
                if check(status):
                    return status
            if self.task.done():
                self.task.result()
            assert asyncio.get_running_loop().time() < deadline, f"no such status; last: {self.statuses()[-1:]}"
            await asyncio.sleep(0.005)

    async def ask(self, task: WorkerTask, timeout_s: float = 5.0) -> WorkerResult:
        subject = worker_task(self.settings.host_name, self.worker_id)
        return await self.bus.request(subject, task, WorkerResult, timeout_s=timeout_s)

    async def stop(self) -> None:
        self.ctx.stopping.set()
        await asyncio.wait_for(self.task, 10)


def worker_settings(tmp_path: Path, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "host_name": HOST,
        "device": "cuda:0",
        "worker_id": f"w-{uuid.uuid4().hex[:8]}",
        "model_groups_file": write_catalog(tmp_path),
        "status_interval_s": 0.05,
        "status_min_interval_s": 0.0,
        "latency_jitter": 0.0,
        "inventory_wait_s": 1.0,
        "drain_timeout_s": 2.0,
        "heartbeat_interval_s": 60,
        **overrides,
    }
    return WorkerSettings(**values)


async def launch(bus: MemoryBus, settings: WorkerSettings) -> RunningWorker:
    async def factory(*_: object) -> Bus:
        return bus

    ctx = ServiceContext(ServiceName.WORKER, settings)
    task = asyncio.create_task(
        serve(
            ServiceName.WORKER,
            settings,
            start_for(settings),
            bus_factory=factory,
            install_signal_handlers=False,
            ctx=ctx,
        )
    )
    return RunningWorker(bus, ctx, task, settings)
