"""The worker service on the in-memory bus: tasks in, results and statuses out, draining."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.worker.core.responses import joined_stream_text, simulated_text
from shared.bus.base import Delivery
from shared.bus.memory import MemoryBus
from shared.contracts import (
    HealthReply,
    HealthRequest,
    InferenceKind,
    Priority,
    ServiceName,
    StreamChunk,
    WorkerState,
    WorkerTask,
)
from shared.errors import ConfigError, NoResponders, RemoteError
from shared.subjects import health, inventory, stream_chunks
from tests.builders import make_inventory, make_reference_gpus
from tests.services.worker.backends.upstream import FakeUpstream
from tests.services.worker.helpers import HOST, RunningWorker, launch, make_task, worker_settings


async def test_registers_with_its_gpu_and_answers_a_chat_task(start: Callable[..., Any]) -> None:
    worker: RunningWorker = await start()
    ready = worker.statuses()[-1]
    assert (ready.device, ready.gpu_index, ready.gpu_name, ready.host, ready.backend) == (
        "cuda:0",
        0,
        "NVIDIA RTX A5500",
        HOST,
        "simulated",
    )
    assert ready.slots == 3 and ready.vram_total_mb == 24564 and ready.groups_loaded == ()
    assert "big-chat" in ready.models and "embed-a" in ready.models and "huge-chat" not in ready.models

    result = await worker.ask(make_task("big-chat", text="What is a GPU?"))
    assert (result.worker_id, result.device, result.host, result.group) == (worker.worker_id, "cuda:0", HOST, "big")
    assert result.loaded_group and result.load_s == pytest.approx(0.02)
    [body] = result.bodies
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "[simulated big-chat on cuda:0] You said: What is a GPU?"

    again = await worker.ask(make_task("big-chat"))
    assert not again.loaded_group and again.load_s == 0 and again.service_s == pytest.approx(0.01, abs=0.005)


async def test_statuses_follow_loads_and_requests(start: Callable[..., Any]) -> None:
    worker: RunningWorker = await start()
    asking = asyncio.create_task(worker.ask(make_task("big-chat", max_tokens=128 * 16)))  # 0.16 s
    busy = await worker.wait_status(lambda s: s.in_flight == 1 and s.groups_loaded == ("big",))
    assert busy.current_group == "big" and busy.vram_used_mb == 16384
    await asking
    done = await worker.wait_status(lambda s: s.in_flight == 0 and s.request_count == 1)
    assert done.latency_avg_s == pytest.approx(0.16, abs=0.03) and done.group_switches == 1
    sequences = [s.sequence for s in worker.statuses()]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert any(s.utilization_percent and s.utilization_percent > 0 for s in worker.statuses())


async def test_default_group_is_preloaded_before_ready(start: Callable[..., Any]) -> None:
    worker: RunningWorker = await start(default_group="big")
    states = [s.state for s in worker.statuses()]
    assert states[0] is WorkerState.STARTING
    ready = next(s for s in worker.statuses() if s.state is WorkerState.READY)
    assert ready.groups_loaded == ("big",)
    result = await worker.ask(make_task("big-chat"))
    assert not result.loaded_group


async def test_lazy_default_group_loads_on_first_use(start: Callable[..., Any]) -> None:
    worker: RunningWorker = await start(default_group="big", lazy_load_model=True)
    assert worker.statuses()[-1].groups_loaded == ()
    assert (await worker.ask(make_task("big-chat"))).loaded_group


async def test_streamed_answer_arrives_as_ordered_chunks_before_the_result(
    start: Callable[..., Any], bus: MemoryBus
) -> None:
    worker: RunningWorker = await start()
    subject = stream_chunks(ServiceName.ROUTER, "router-1", "r-stream")
    chunks: list[StreamChunk] = []

    async def on_chunk(chunk: StreamChunk, _: Delivery) -> None:
        chunks.append(chunk)

    await bus.subscribe(subject, StreamChunk, on_chunk)
    task = make_task("big-chat", text="stream me", stream_subject=subject)
    result = await worker.ask(task)
    published = [m for s, m in bus.published if s == subject]
    assert isinstance(published[-1], StreamChunk) and published[-1].done  # all sent before the reply
    assert result.bodies == ({},)
    await bus.settle()
    assert [c.seq for c in chunks] == list(range(len(chunks))) and 3 <= len(chunks) <= 10
    assert chunks[-1].done and chunks[-1].data is None and not any(c.done for c in chunks[:-1])
    senders = {(c.request_id, c.worker_id, c.device) for c in chunks}
    assert senders == {(task.request_ids[0], worker.worker_id, "cuda:0")}
    text = joined_stream_text([c.data for c in chunks if c.data is not None])
    assert text == simulated_text("big-chat", "cuda:0", task.bodies[0])


async def test_batch_of_embeddings_gives_one_body_per_request(start: Callable[..., Any]) -> None:
    worker: RunningWorker = await start()
    bodies = ({"input": "a"}, {"input": ["b", "c"]}, {"input": "d"})
    result = await worker.ask(make_task("embed-a", kind=InferenceKind.EMBEDDING, group="embed", bodies=bodies))
    assert len(result.bodies) == 3
    assert [len(b["data"]) for b in result.bodies] == [1, 2, 1]
    assert all(b["object"] == "list" and b["model"] == "embed-a" for b in result.bodies)
    status = await worker.wait_status(lambda s: s.request_count == 3)
    assert status.error_count == 0


async def test_exclusive_task_runs_alone(start: Callable[..., Any]) -> None:
    worker: RunningWorker = await start(slots=3, default_group="big")
    finished: list[str] = []

    async def ask(name: str, task: WorkerTask) -> None:
        await worker.ask(task)
        finished.append(name)

    long_a = asyncio.create_task(ask("a", make_task("big-chat", max_tokens=128 * 10)))  # 0.1 s
    long_b = asyncio.create_task(ask("b", make_task("big-chat", max_tokens=128 * 10)))
    await worker.wait_status(lambda s: s.in_flight == 2)
    exclusive_task = make_task("big-chat", exclusive=True)
    exclusive = asyncio.create_task(ask("x", exclusive_task))
    await worker.wait_status(lambda s: s.queue_depth == 1)
    short = asyncio.create_task(ask("c", make_task("big-chat", priority=Priority.NORMAL)))
    await asyncio.gather(long_a, long_b, exclusive, short)
    assert finished[2:] == ["x", "c"]  # c had a free slot but waited behind the exclusive one
    holding = [s for s in worker.statuses() if s.exclusive_request is not None]
    assert holding and all(s.in_flight == 1 for s in holding)
    assert {s.exclusive_request for s in holding} == {exclusive_task.request_ids[0]}


async def test_slots_bound_concurrency_and_the_rest_queue(start: Callable[..., Any]) -> None:
    worker: RunningWorker = await start(slots=2)
    await asyncio.gather(*(worker.ask(make_task("big-chat", max_tokens=128 * 4)) for _ in range(5)))
    statuses = worker.statuses()
    assert max(s.in_flight for s in statuses) == 2
    assert max(s.queue_depth for s in statuses) >= 1


async def test_group_switch_reloads_from_the_cpu_cache(start: Callable[..., Any]) -> None:
    worker: RunningWorker = await start(device="cuda:1")  # the 4 GB A400: small (3) + embed (1) > 4094 MiB
    assert worker.statuses()[-1].slots == 1
    embed = make_task("embed-a", kind=InferenceKind.EMBEDDING, group="embed", bodies=({"input": "x"},))

    def loads(source: str) -> float:
        labels = {"worker": worker.worker_id, "group": "small", "source": source}
        return REGISTRY.get_sample_value("gpuplane_worker_group_loads_total", labels) or 0.0

    first = await worker.ask(make_task("small-chat"))
    await worker.ask(embed)
    back = await worker.ask(make_task("small-chat"))
    assert first.loaded_group and back.loaded_group and back.load_s == pytest.approx(0.2 * 0.02)
    status = await worker.wait_status(lambda s: s.request_count == 3)
    assert status.groups_loaded == ("small",) and status.cpu_cached_groups == ("embed",)
    assert status.group_switches == 3
    assert (loads("disk"), loads("cpu_cache")) == (1.0, 1.0)


async def test_models_it_cannot_serve_are_not_found(start: Callable[..., Any]) -> None:
    worker: RunningWorker = await start()
    with pytest.raises(RemoteError) as unknown:
        await worker.ask(make_task("gpt-17"))
    assert unknown.value.code == "not_found" and unknown.value.field == "model"
    with pytest.raises(RemoteError, match="'huge' needs 40960 MiB") as too_big:
        await worker.ask(make_task("huge-chat", group="huge"))
    assert too_big.value.code == "not_found"
    with pytest.raises(RemoteError) as bad:
        await worker.ask(make_task("big-chat", bodies=({}, {})))
    assert bad.value.code == "bad_request" and bad.value.field == "bodies"


async def test_failures_count_as_errors(start: Callable[..., Any]) -> None:
    worker: RunningWorker = await start(fail_rate=1.0)
    with pytest.raises(RemoteError, match="simulated failure") as failed:
        await worker.ask(make_task("big-chat"))
    assert failed.value.code == "internal"
    status = await worker.wait_status(lambda s: s.error_count == 1)
    assert status.request_count == 1 and status.in_flight == 0


async def test_health_reply_names_device_and_load(start: Callable[..., Any], bus: MemoryBus) -> None:
    worker: RunningWorker = await start(default_group="big")
    reply = await bus.request(health(ServiceName.WORKER), HealthRequest(), HealthReply)
    assert reply.service is ServiceName.WORKER
    assert {k: reply.details[k] for k in ("device", "slots", "in_flight", "groups", "state")} == {
        "device": "cuda:0",
        "slots": "3",
        "in_flight": "0",
        "groups": "big",
        "state": "ready",
    }
    assert reply.details["worker_id"] == worker.worker_id


async def test_stop_drains_running_work_then_says_stopped(start: Callable[..., Any]) -> None:
    worker: RunningWorker = await start()
    running = asyncio.create_task(worker.ask(make_task("big-chat", max_tokens=128 * 16)))  # 0.16 s
    await worker.wait_status(lambda s: s.in_flight == 1)
    worker.ctx.stopping.set()
    await worker.wait_status(lambda s: s.state is WorkerState.DRAINING)
    with pytest.raises(NoResponders):
        await worker.ask(make_task("big-chat"))
    result = await running
    assert result.bodies[0]["object"] == "chat.completion"
    await asyncio.wait_for(worker.task, 10)
    states = [s.state for s in worker.statuses()]
    assert states[-1] is WorkerState.STOPPED and states.count(WorkerState.STOPPED) == 1
    assert WorkerState.DRAINING in states
    assert worker.statuses()[-1].request_count == 1


async def test_cpu_worker_needs_no_inventory(tmp_path: Path) -> None:
    bus = MemoryBus("test")  # no inventory at all
    worker = await launch(bus, worker_settings(tmp_path, device="cpu"))
    try:
        ready = await worker.wait_status(lambda s: s.state is WorkerState.READY)
        assert (ready.device, ready.slots, ready.vram_total_mb, ready.gpu_index) == ("cpu", 1, 16384, None)
        result = await worker.ask(make_task("small-chat"))
        assert result.service_s == pytest.approx(0.1, abs=0.02)  # speed 0.1
    finally:
        await worker.stop()


async def test_missing_gpu_fails_naming_the_gpus_that_exist(bus: MemoryBus, tmp_path: Path) -> None:
    worker = await launch(bus, worker_settings(tmp_path, device="cuda:7"))
    with pytest.raises(ConfigError, match=r"cuda:7 is not a GPU of host box.*cuda:0 \(NVIDIA RTX A5500\), cuda:1"):
        await asyncio.wait_for(worker.task, 5)


async def test_no_inventory_fails_unless_vram_is_given(tmp_path: Path) -> None:
    bus = MemoryBus("test")
    worker = await launch(bus, worker_settings(tmp_path, inventory_wait_s=0.05))
    with pytest.raises(ConfigError, match="the detector has not reported an inventory of host box"):
        await asyncio.wait_for(worker.task, 5)
    bus.reopen()
    worker = await launch(bus, worker_settings(tmp_path, inventory_wait_s=0.05, vram_mb=8192))
    try:
        ready = await worker.wait_status(lambda s: s.state is WorkerState.READY)
        assert (ready.vram_total_mb, ready.slots, ready.gpu_uuid) == (8192, 1, None)
    finally:
        await worker.stop()


async def test_inventory_arriving_late_is_used(tmp_path: Path) -> None:
    bus = MemoryBus("test")
    worker = await launch(bus, worker_settings(tmp_path, device="cuda:1", inventory_wait_s=5))
    try:
        await asyncio.sleep(0.05)
        assert not worker.statuses()
        await bus.publish(inventory(HOST), make_inventory(make_reference_gpus(), host=HOST))
        ready = await worker.wait_status(lambda s: s.state is WorkerState.READY)
        assert ready.gpu_name == "NVIDIA RTX A400" and ready.vram_total_mb == 4094
    finally:
        await worker.stop()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    server.start()
    yield server
    server.stop()


def chat_body(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_openai_backend_serves_through_the_worker(
    start: Callable[..., Any], bus: MemoryBus, upstream: FakeUpstream
) -> None:
    worker: RunningWorker = await start(backend="openai", upstream_url=upstream.url)
    ready = worker.statuses()[-1]
    assert ready.backend == "openai" and ready.models == ("up-chat", "embed-a", "embed-b")
    assert ready.groups_loaded == ("up-chat", "embed")

    result = await worker.ask(make_task("up-chat", group="up-chat", bodies=(chat_body("hi"),)))
    assert result.bodies[0]["choices"][0]["message"]["content"] == "upstream heard: hi"
    assert not result.loaded_group

    with pytest.raises(RemoteError, match="max_tokens must be at most 4096") as rejected:
        await worker.ask(make_task("up-chat", group="up-chat", bodies=(chat_body("fail 400"),)))
    assert rejected.value.code == "bad_request"
    with pytest.raises(RemoteError) as missing:
        await worker.ask(make_task("big-chat"))
    assert missing.value.code == "not_found"

    subject = stream_chunks(ServiceName.ROUTER, "router-1", "r-broken")
    with pytest.raises(RemoteError, match="not JSON") as broken:
        await worker.ask(
            make_task("up-chat", group="up-chat", bodies=(chat_body("break stream"),), stream_subject=subject)
        )
    assert broken.value.code == "internal"
    chunks = [m for s, m in bus.published if s == subject and isinstance(m, StreamChunk)]
    assert [(c.seq, c.data is not None, c.done, c.error is not None) for c in chunks] == [
        (0, True, False, False),
        (1, False, False, True),
    ]
    # A client's bad request is not the worker's failure; a broken upstream is.
    status = await worker.wait_status(lambda s: s.request_count == 3)
    assert status.error_count == 1
