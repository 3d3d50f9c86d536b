"""The router controller on the in-memory bus with fake workers: placement, retries, streams, batches."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.router.service import Router
from services.router.settings import RouterSettings
from shared.bus.base import Delivery
from shared.bus.memory import MemoryBus
from shared.contracts import (
    InferenceKind,
    InferenceRequest,
    InferenceResult,
    Priority,
    Route,
    RouterHeld,
    RouterHeldQuery,
    RouterState,
    RouterStateRequest,
    ServiceName,
    StreamChunk,
)
from shared.errors import RemoteError
from shared.modelgroups import ModelCatalog
from shared.subjects import ROUTER_HELD, ROUTER_INFER, ROUTER_STATE, inventory, stream_chunks
from tests.builders import make_gpu, make_inventory
from tests.services.router.fakes import FakeWorker

CATALOG = ModelCatalog.model_validate(
    {
        "groups": [
            {"id": "ga", "vram_gb": 8, "load_time_s": 5, "models": [{"id": "chat-a", "latency_s": 0.01}]},
            {"id": "gb", "vram_gb": 8, "load_time_s": 5, "models": [{"id": "chat-b", "latency_s": 0.01}]},
            {"id": "ge", "vram_gb": 1, "load_time_s": 1, "models": [{"id": "embed", "kind": "embedding"}]},
            {"id": "gt", "vram_gb": 1, "load_time_s": 1, "models": [{"id": "tiny", "small": True}]},
        ]
    }
)


def settings(**overrides: Any) -> RouterSettings:
    base: dict[str, Any] = {
        "nats_url": "nats://memory",
        "worker_timeout_s": 0.5,
        "unplaceable_timeout_s": 1.0,
        "embedding_batch_window_s": 0.05,
        "seed": 1,
    }
    return RouterSettings(**(base | overrides))


@pytest.fixture
async def router(memory_bus: MemoryBus) -> AsyncIterator[Router]:
    router = Router(memory_bus, settings(), CATALOG, "r1")
    await router.start()
    timers = asyncio.create_task(router.run_timers())
    yield router
    timers.cancel()
    await router.close()


async def ask(bus: MemoryBus, model: str = "chat-a", **fields: Any) -> InferenceResult:
    kind = fields.pop("kind", InferenceKind.CHAT)
    request = InferenceRequest(request_id=uuid.uuid4().hex, kind=kind, model=model, body={"model": model}, **fields)
    return await bus.request(ROUTER_INFER, request, InferenceResult, timeout_s=10)


async def workers(bus: MemoryBus, *specs: dict[str, Any]) -> list[FakeWorker]:
    started = [await FakeWorker(bus, **spec).start() for spec in specs]
    await bus.settle()
    return started


async def test_a_request_goes_to_the_worker_that_holds_its_group(memory_bus: MemoryBus, router: Router) -> None:
    await workers(
        memory_bus,
        {"worker_id": "w0", "device": "cuda:0", "groups": ("gb",)},
        {"worker_id": "w1", "device": "cuda:1", "groups": ("ga",)},
    )
    result = await ask(memory_bus, "chat-a")
    assert (result.worker_id, result.device, result.route, result.group) == ("w1", "cuda:1", Route.AFFINITY, "ga")
    assert result.body is not None and result.body["served_by"] == "w1"


async def test_unknown_model_is_not_found_with_the_models_listed(memory_bus: MemoryBus, router: Router) -> None:
    await workers(memory_bus, {"worker_id": "w0"})
    with pytest.raises(RemoteError) as caught:
        await ask(memory_bus, "nope")
    assert caught.value.code == "not_found"
    assert caught.value.field == "model"
    assert "chat-a" in caught.value.remote_message


async def test_a_worker_that_dies_mid_request_loses_nothing(memory_bus: MemoryBus, router: Router) -> None:
    slow, healthy = await workers(
        memory_bus,
        {"worker_id": "w0", "device": "cuda:0", "groups": ("ga",), "latency_s": 5.0},
        {"worker_id": "w1", "device": "cuda:1", "latency_s": 0.01},
    )
    pending = asyncio.create_task(ask(memory_bus, "chat-a"))
    for _ in range(100):
        if slow.tasks:
            break
        await asyncio.sleep(0.01)
    slow.die()
    result = await asyncio.wait_for(pending, 5)
    assert result.worker_id == "w1"
    assert result.route is Route.RETRY
    assert result.attempts == 2


async def test_a_failure_is_retried_once_elsewhere(memory_bus: MemoryBus, router: Router) -> None:
    await workers(
        memory_bus,
        {"worker_id": "w0", "device": "cuda:0", "groups": ("ga",), "fail": True},
        {"worker_id": "w1", "device": "cuda:1"},
    )
    result = await ask(memory_bus, "chat-a")
    assert (result.worker_id, result.route, result.attempts) == ("w1", Route.RETRY, 2)


async def test_the_state_keeps_the_last_decisions_newest_first(memory_bus: MemoryBus, router: Router) -> None:
    await workers(memory_bus, {"worker_id": "w0", "device": "cuda:0"}, {"worker_id": "w1", "device": "cuda:1"})
    answers = [await ask(memory_bus, "chat-a") for _ in range(3)]

    decisions = router.state().decisions
    assert [d.request_id for d in decisions] == [a.request_id for a in reversed(answers)]
    newest = decisions[0]
    assert (newest.model, newest.worker_id, newest.device, newest.route, newest.reason) == (
        "chat-a", answers[-1].worker_id, answers[-1].device, answers[-1].route, answers[-1].reason
    )
    assert newest.reason


async def test_a_failure_everywhere_is_answered_after_one_retry(memory_bus: MemoryBus, router: Router) -> None:
    bad = await workers(
        memory_bus,
        {"worker_id": "w0", "device": "cuda:0", "fail": True},
        {"worker_id": "w1", "device": "cuda:1", "fail": True},
    )
    with pytest.raises(RemoteError) as caught:
        await ask(memory_bus, "chat-a")
    assert caught.value.code == "internal"
    assert "after 2 attempt(s)" in caught.value.remote_message
    assert sum(len(w.tasks) for w in bad) == 2


async def test_the_circuit_opens_after_consecutive_failures(memory_bus: MemoryBus) -> None:
    router = Router(memory_bus, settings(circuit_failure_threshold=2, retry_attempts=0), CATALOG, "r1")
    await router.start()
    (bad,) = await workers(memory_bus, {"worker_id": "w0", "fail": True})
    for _ in range(2):
        with pytest.raises(RemoteError):
            await ask(memory_bus, "chat-a")
    state = router.state()
    assert state.workers[0].circuit == "open"
    assert state.workers[0].why_not == "circuit open"


async def test_exclusive_gpu_waits_for_the_device_and_keeps_others_off(memory_bus: MemoryBus, router: Router) -> None:
    w0, w1 = await workers(
        memory_bus,
        {"worker_id": "w0", "device": "cuda:0", "groups": ("ga",), "latency_s": 0.3},
        {"worker_id": "w1", "device": "cuda:1", "latency_s": 0.05},
    )
    busy = asyncio.create_task(ask(memory_bus, "chat-a"))
    await asyncio.sleep(0.05)
    exclusive = asyncio.create_task(ask(memory_bus, "chat-a", exclusive_gpu="cuda:0"))
    await asyncio.sleep(0.05)
    # While the exclusive request waits for cuda:0, new work goes to the other GPU.
    other = await ask(memory_bus, "chat-a")
    assert other.worker_id == "w1"
    result = await exclusive
    assert (result.worker_id, result.route) == ("w0", Route.EXCLUSIVE)
    assert [t.exclusive for t in w0.tasks] == [False, True]
    await busy


async def test_exclusive_gpu_that_does_not_exist_names_the_devices(memory_bus: MemoryBus, router: Router) -> None:
    await workers(memory_bus, {"worker_id": "w0", "device": "cuda:0"})
    with pytest.raises(RemoteError) as caught:
        await ask(memory_bus, "chat-a", exclusive_gpu="cuda:7")
    assert caught.value.code == "not_found"
    assert caught.value.field == "exclusive_gpu"
    assert "cuda:0" in caught.value.remote_message


async def test_embeddings_are_batched(memory_bus: MemoryBus, router: Router) -> None:
    (worker,) = await workers(memory_bus, {"worker_id": "w0", "latency_s": 0.05})
    results = await asyncio.gather(*(ask(memory_bus, "embed", kind=InferenceKind.EMBEDDING) for _ in range(5)))
    assert sorted(len(t.request_ids) for t in worker.tasks) == [1, 4]
    assert {r.request_id for r in results} == {rid for t in worker.tasks for rid in t.request_ids}
    assert sorted(r.batch_size for r in results) == [1, 4, 4, 4, 4]


async def test_a_full_queue_answers_overloaded_with_a_retry_time(memory_bus: MemoryBus) -> None:
    router = Router(memory_bus, settings(queue_limit=2, worker_queue_limit=0), CATALOG, "r1")
    await router.start()
    await workers(memory_bus, {"worker_id": "w0", "latency_s": 0.3})
    running = [asyncio.create_task(ask(memory_bus, "chat-a")) for _ in range(3)]
    await asyncio.sleep(0.05)
    with pytest.raises(RemoteError) as caught:
        await ask(memory_bus, "chat-a")
    assert caught.value.code == "overloaded"
    assert int(caught.value.context["retry_after_s"]) >= 1
    await asyncio.gather(*running)


async def test_high_priority_overtakes_queued_low(memory_bus: MemoryBus) -> None:
    router = Router(memory_bus, settings(worker_queue_limit=0), CATALOG, "r1")
    await router.start()
    (worker,) = await workers(memory_bus, {"worker_id": "w0", "latency_s": 0.1})
    first = asyncio.create_task(ask(memory_bus, "chat-a"))
    await asyncio.sleep(0.03)
    low = asyncio.create_task(ask(memory_bus, "chat-b", priority=Priority.LOW))
    await asyncio.sleep(0.01)
    high = asyncio.create_task(ask(memory_bus, "chat-a", priority=Priority.HIGH))
    await asyncio.gather(first, low, high)
    assert [t.priority for t in worker.tasks] == [Priority.NORMAL, Priority.HIGH, Priority.LOW]


async def test_an_unhealthy_gpu_leaves_the_pool_and_comes_back(memory_bus: MemoryBus, router: Router) -> None:
    await workers(
        memory_bus,
        {"worker_id": "w0", "device": "cuda:0", "groups": ("ga",)},
        {"worker_id": "w1", "device": "cuda:1"},
    )
    sick = make_inventory((make_gpu(0, healthy=False, health_reason="Xid 79"), make_gpu(1)))
    await memory_bus.publish(inventory("box-a"), sick)
    await memory_bus.settle()
    assert (await ask(memory_bus, "chat-a")).worker_id == "w1"
    assert "Xid 79" in (router.state().workers[0].why_not or "")
    well = make_inventory((make_gpu(0), make_gpu(1)), sequence=2, detected_at=sick.detected_at.replace(year=2031))
    await memory_bus.publish(inventory("box-a"), well)
    await memory_bus.settle()
    assert (await ask(memory_bus, "chat-a")).worker_id == "w0"


async def test_small_models_fall_back_to_cpu_when_no_gpu_worker_is_healthy(
    memory_bus: MemoryBus, router: Router
) -> None:
    gpu, _ = await workers(
        memory_bus,
        {"worker_id": "w0", "device": "cuda:0"},
        {"worker_id": "cpu0", "device": "cpu", "models": ("tiny",)},
    )
    assert (await ask(memory_bus, "tiny")).worker_id == "w0"
    gpu.die()
    await asyncio.sleep(0.7)
    result = await ask(memory_bus, "tiny")
    assert (result.worker_id, result.route) == ("cpu0", Route.CPU_FALLBACK)


async def test_no_worker_up_is_unavailable_after_a_while_with_reasons(memory_bus: MemoryBus, router: Router) -> None:
    (worker,) = await workers(memory_bus, {"worker_id": "w0"})
    worker.die()
    await asyncio.sleep(0.7)
    with pytest.raises(RemoteError) as caught:
        await ask(memory_bus, "chat-a")
    assert caught.value.code == "unavailable"
    assert "w0: silent" in caught.value.remote_message


async def test_streams_are_relayed_with_who_served_them_first(memory_bus: MemoryBus, router: Router) -> None:
    await workers(memory_bus, {"worker_id": "w0", "groups": ("ga",)})
    subject = stream_chunks(ServiceName.API, "gw", "req-1")
    got: list[StreamChunk] = []

    async def collect(chunk: StreamChunk, _: Delivery) -> None:
        got.append(chunk)

    await memory_bus.subscribe(subject, StreamChunk, collect)
    request = InferenceRequest(
        request_id="req-1", kind=InferenceKind.CHAT, model="chat-a", body={"stream": True}, stream_subject=subject
    )
    result = await memory_bus.request(ROUTER_INFER, request, InferenceResult, timeout_s=5)
    await memory_bus.settle()
    assert result.body is None
    assert [c.seq for c in got] == [0, 1, 2, 3]
    assert (got[0].worker_id, got[0].device, got[0].route) == ("w0", "cuda:0", Route.AFFINITY)
    assert got[-1].done and all(c.request_id == "req-1" for c in got)


async def test_state_describes_workers_devices_and_groups(memory_bus: MemoryBus, router: Router) -> None:
    await memory_bus.publish(inventory("box-a"), make_inventory())
    await workers(memory_bus, {"worker_id": "w0", "device": "cuda:0", "groups": ("ga",)})
    state = await memory_bus.request(ROUTER_STATE, RouterStateRequest(), RouterState)
    assert [v.status.worker_id for v in state.workers] == ["w0"]
    assert [d.device for d in state.devices] == ["cuda:0", "cuda:1"]
    assert {g.group_id for g in state.groups} == {"ga", "gb", "ge", "gt"}
    assert state.queued == {"high": 0, "normal": 0, "low": 0}


async def test_a_worker_that_restarts_mid_request_loses_nothing(memory_bus: MemoryBus, router: Router) -> None:
    """A supervisor restarts a killed worker under the same id before it is missed: its lower status
    sequence tells the router that the tasks the old process had are gone."""
    slow, _ = await workers(
        memory_bus,
        {"worker_id": "w0", "device": "cuda:0", "groups": ("ga",), "latency_s": 5.0},
        {"worker_id": "w1", "device": "cuda:1"},
    )
    pending = asyncio.create_task(ask(memory_bus, "chat-a"))
    for _ in range(100):
        if slow.tasks:
            break
        await asyncio.sleep(0.01)
    slow.hang = True
    slow.sequence = 0
    await slow.publish()
    slow.hang, slow.latency_s = False, 0.01  # the new process serves
    result = await asyncio.wait_for(pending, 2)
    assert (result.route, result.attempts) == (Route.RETRY, 2)


async def test_peak_utilization_follows_worker_statuses_not_state_requests(
    memory_bus: MemoryBus, router: Router
) -> None:
    from shared.contracts import WorkerState, WorkerStatus
    from shared.subjects import worker_status

    await memory_bus.publish(inventory("box-a"), make_inventory())
    busy = WorkerStatus(
        worker_id="w0", host="box-a", device="cuda:0", gpu_index=0, backend="fake", state=WorkerState.READY,
        slots=1, in_flight=1, queue_depth=0, utilization_percent=90.0, sequence=1,
    )
    await memory_bus.publish(worker_status("box-a", "w0"), busy)
    calmer = busy.model_copy(update={"utilization_percent": 10.0, "sequence": 2})
    await memory_bus.publish(worker_status("box-a", "w0"), calmer)
    await memory_bus.settle()
    cuda0 = next(d for d in router.state().devices if d.device == "cuda:0")
    assert (cuda0.utilization, cuda0.peak_utilization) == (10.0, 90.0)


async def test_a_task_nobody_answers_waits_for_the_worker_to_come_back(memory_bus: MemoryBus, router: Router) -> None:
    """A worker killed before its silence is noticed: no responders on its task subject means it is
    gone, not that the request failed there, so the request waits for it instead of failing."""
    from shared.contracts import WorkerState, WorkerStatus
    from shared.subjects import worker_status

    ghost = WorkerStatus(
        worker_id="w0", host="box-a", device="cuda:0", gpu_index=0, backend="fake", state=WorkerState.READY,
        slots=1, in_flight=0, queue_depth=0, groups_loaded=("ga",), models=("chat-a",), sequence=5,
    )
    await memory_bus.publish(worker_status("box-a", "w0"), ghost)
    await memory_bus.settle()
    pending = asyncio.create_task(ask(memory_bus, "chat-a"))
    await asyncio.sleep(0.1)
    assert not pending.done()
    back = await FakeWorker(memory_bus, "w0", groups=("ga",)).start()
    result = await asyncio.wait_for(pending, 3)
    assert (result.worker_id, result.route) == ("w0", Route.RETRY)
    assert len(back.tasks) == 1


@pytest.fixture
async def watching_router(memory_bus: MemoryBus) -> AsyncIterator[Router]:
    """A router that asks its workers about tasks out for 50 ms, every 50 ms, with a 100 ms grace."""
    fast = settings(answer_check_interval_s=0.05, answer_check_after_s=0.05, answer_grace_s=0.1)
    router = Router(memory_bus, fast, CATALOG, "r1")
    await router.start()
    loops = [asyncio.create_task(router.run_timers()), asyncio.create_task(router.watch_answers())]
    yield router
    for loop in loops:
        loop.cancel()
    await router.close()


async def test_an_answer_lost_on_the_way_back_is_noticed_and_the_request_served_again(
    memory_bus: MemoryBus, watching_router: Router
) -> None:
    """NATS restarting can drop a worker's answer: the worker no longer holds the task, the router still waits.
    Asked which tasks it holds, the worker leaves it out; a grace later it is sent again (its worker may well be
    fine: only the answer was lost, so the same worker, holding the group, serves it)."""
    router = watching_router
    (lossy,) = await workers(memory_bus, {"worker_id": "w0", "groups": ("ga",), "lose_answers": 1})
    result = await asyncio.wait_for(ask(memory_bus, "chat-a"), 5)
    assert len(lossy.tasks) == 2
    assert (result.worker_id, result.attempts) == ("w0", 2)
    assert router.dispatcher.out == {}  # its slot is free again
    assert router.pools.workers["w0"].circuit.state(router.clock()).value == "closed"


async def test_a_slow_answer_that_its_worker_still_holds_is_left_alone(
    memory_bus: MemoryBus, watching_router: Router
) -> None:
    (slow,) = await workers(memory_bus, {"worker_id": "w0", "groups": ("ga",), "latency_s": 0.6})
    result = await asyncio.wait_for(ask(memory_bus, "chat-a"), 5)
    assert (result.worker_id, result.attempts, len(slow.tasks)) == ("w0", 1, 1)


async def test_the_router_says_which_requests_it_holds(memory_bus: MemoryBus, router: Router) -> None:
    (slow,) = await workers(memory_bus, {"worker_id": "w0", "groups": ("ga",), "latency_s": 0.5})
    request = InferenceRequest(request_id="held-1", kind=InferenceKind.CHAT, model="chat-a", body={"model": "chat-a"})
    pending = asyncio.create_task(memory_bus.request(ROUTER_INFER, request, InferenceResult, timeout_s=5))
    await asyncio.sleep(0.1)
    (reply,) = await memory_bus.gather(
        ROUTER_HELD, RouterHeldQuery(request_ids=("held-1", "never-seen")), RouterHeld, timeout_s=1
    )
    assert (reply.router, reply.request_ids) == ("r1", ("held-1",))
    await pending
    (reply,) = await memory_bus.gather(ROUTER_HELD, RouterHeldQuery(request_ids=("held-1",)), RouterHeld, timeout_s=1)
    assert reply.request_ids == ()
