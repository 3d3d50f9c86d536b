"""A fake worker on the in-memory bus: answers tasks after a delay, can fail, hang or die."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shared.bus.base import Delivery
from shared.bus.memory import MemoryBus
from shared.contracts import (
    StreamChunk,
    WorkerHeld,
    WorkerHeldQuery,
    WorkerResult,
    WorkerState,
    WorkerStatus,
    WorkerTask,
)
from shared.errors import NotFound, OperationFailed
from shared.subjects import worker_held, worker_status, worker_task

USAGE = {"prompt_tokens": 3, "completion_tokens": 5}


@dataclass
class FakeWorker:
    bus: MemoryBus
    worker_id: str
    device: str = "cuda:0"
    host: str = "box-a"
    slots: int = 1
    groups: tuple[str, ...] = ()
    models: tuple[str, ...] = ("chat-a", "chat-b", "embed", "tiny")
    latency_s: float = 0.01
    latency_avg_s: float = 0.0
    fail: bool = False
    hang: bool = False
    in_flight: int = 0
    sequence: int = 0
    tasks: list[WorkerTask] = field(default_factory=list)
    dead: bool = False
    lose_answers: int = 0
    """Finish this many tasks but never answer them, as if their answers were lost on the way back."""
    held: set[str] = field(default_factory=set)
    _beat: asyncio.Task[None] | None = None

    async def start(self) -> FakeWorker:
        await self.bus.subscribe(worker_task(self.host, self.worker_id), WorkerTask, self._on_task)
        await self.bus.subscribe(worker_held(self.host, self.worker_id), WorkerHeldQuery, self._on_held)
        await self.publish()
        self._beat = asyncio.create_task(self._heartbeat())
        return self

    async def _heartbeat(self) -> None:
        while not self.dead and self.bus.is_connected:
            await asyncio.sleep(0.1)
            await self.publish()

    async def publish(self, state: WorkerState = WorkerState.READY) -> None:
        if self.dead:
            return
        self.sequence += 1
        index = int(self.device.split(":")[1]) if self.device.startswith("cuda:") else None
        await self.bus.publish(
            worker_status(self.host, self.worker_id),
            WorkerStatus(
                worker_id=self.worker_id,
                host=self.host,
                device=self.device,
                gpu_index=index,
                backend="fake",
                state=state,
                slots=self.slots,
                in_flight=self.in_flight,
                queue_depth=0,
                groups_loaded=self.groups,
                current_group=self.groups[-1] if self.groups else None,
                models=self.models,
                latency_avg_s=self.latency_avg_s,
                sequence=self.sequence,
            ),
        )

    def die(self) -> None:
        """Like a SIGKILL: no more statuses, no answers."""
        self.dead = True
        self.hang = True

    async def _on_held(self, query: WorkerHeldQuery, _: Delivery) -> WorkerHeld:
        return WorkerHeld(worker_id=self.worker_id, task_ids=tuple(t for t in query.task_ids if t in self.held))

    async def _on_task(self, task: WorkerTask, _: Delivery) -> WorkerResult:
        self.tasks.append(task)
        if self.lose_answers > 0:
            self.lose_answers -= 1
            await asyncio.Event().wait()  # done and answered, as far as this worker knows: not held
        self.held.add(task.task_id)
        try:
            return await self._serve(task)
        finally:
            self.held.discard(task.task_id)

    async def _serve(self, task: WorkerTask) -> WorkerResult:
        if task.model not in self.models:
            raise NotFound(f"{self.worker_id} cannot load {task.model}", field="model")
        self.in_flight += 1
        await self.publish()
        try:
            if task.stream_subject is not None and not self.fail:
                for seq in range(3):
                    await self.bus.publish(
                        task.stream_subject,
                        StreamChunk(request_id=task.request_ids[0], seq=seq, data={"delta": f"t{seq}"}),
                    )
                    await asyncio.sleep(self.latency_s / 3)
            else:
                await asyncio.sleep(self.latency_s)
            if self.hang:
                await asyncio.Event().wait()
            if self.fail:
                raise OperationFailed(f"{self.worker_id} failed on purpose")
            if task.stream_subject is not None:
                done = StreamChunk(request_id=task.request_ids[0], seq=3, done=True)
                await self.bus.publish(task.stream_subject, done)
            if task.group not in self.groups:
                self.groups = (*self.groups, task.group)
            return WorkerResult(
                task_id=task.task_id,
                worker_id=self.worker_id,
                device=self.device,
                host=self.host,
                group=task.group,
                bodies=tuple(
                    {"served_by": self.worker_id, "n": i, "echo": b, "usage": USAGE} for i, b in enumerate(task.bodies)
                ),
                service_s=self.latency_s,
            )
        finally:
            self.in_flight -= 1
            await self.publish()
