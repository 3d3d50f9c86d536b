"""The simulated backend in real (tiny) time: loads block the device, switches wait for groups in use."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from services.worker.backends import BackendConfig, LoadResult, open_backend
from services.worker.backends.simulated import SimulatedBackend
from services.worker.core.device import DeviceProfile
from services.worker.core.simgpu import GroupTooLarge
from shared.contracts import InferenceKind
from shared.errors import ConfigError, NotFound, OperationFailed
from tests.services.worker.helpers import make_catalog, make_task


def make_backend(vram_mb: int = 20480, *, load_time_s: float = 0.02, **config: Any) -> SimulatedBackend:
    catalog = make_catalog()
    if load_time_s != 0.02:
        catalog = catalog.model_copy(
            update={"groups": tuple(g.model_copy(update={"load_time_s": load_time_s}) for g in catalog.groups)}
        )
    profile = DeviceProfile(device="cuda:0", vram_total_mb=vram_mb, vram_used_mb=0, speed=1.0, slots=3, gpu_index=0)
    backend = open_backend(
        "simulated",
        BackendConfig(
            worker_id="w", host="box", profile=profile, catalog=catalog, wall_clock=lambda: 1700000000.0, **config
        ),
    )
    assert isinstance(backend, SimulatedBackend)
    return backend


async def test_first_task_loads_its_group_then_serves() -> None:
    loads: list[LoadResult] = []
    backend = make_backend(on_load=loads.append)
    first = await backend.execute(make_task("big-chat", text="hi"), None)
    second = await backend.execute(
        make_task("big-text", kind=InferenceKind.COMPLETION, bodies=({"prompt": "p"},)), None
    )
    assert first.load == LoadResult(group="big", loaded=True, from_cpu_cache=False, load_s=0.02)
    assert second.load.loaded is False and second.service_s == pytest.approx(0.01)
    assert first.bodies[0]["choices"][0]["message"]["content"] == "[simulated big-chat on cuda:0] You said: hi"
    assert first.bodies[0]["created"] == 1700000000
    assert [load.group for load in loads] == ["big"]
    state = backend.state()
    assert state.groups_loaded == ("big",) and state.current_group == "big" and state.vram_used_mb == 16384
    assert "huge-chat" not in state.models and "big-chat" in state.models


async def test_switch_waits_for_the_group_in_use_and_a_reload_comes_from_the_cpu_cache() -> None:
    backend = make_backend(20480)  # big (16 GB) and other (15 GB) cannot share it
    finished: list[str] = []

    async def run(name: str, model: str, max_tokens: int | None = None) -> Any:
        result = await backend.execute(make_task(model, max_tokens=max_tokens), None)
        finished.append(name)
        return result

    long_big = asyncio.create_task(run("long-big", "big-chat", max_tokens=128 * 16))  # 0.16 s
    await asyncio.sleep(0.05)
    switch = asyncio.create_task(run("other", "other-chat"))
    await asyncio.sleep(0.01)
    # Its group is loaded, but a switch waits: it must not keep "big" busy for ever.
    late_big = asyncio.create_task(run("late-big", "big-chat"))
    results = await asyncio.gather(long_big, switch, late_big)
    assert finished == ["long-big", "other", "late-big"]
    assert results[1].load.loaded and not results[1].load.from_cpu_cache
    assert results[2].load.loaded and results[2].load.from_cpu_cache
    assert results[2].load.load_s == pytest.approx(0.2 * 0.02)
    assert backend.state().cpu_cached_groups == ("other",)
    assert backend.gpu.switches == 3


async def test_a_load_blocks_the_device() -> None:
    backend = make_backend(24564, load_time_s=0.2)
    await backend.preload("embed")
    started = time.monotonic()
    loading = asyncio.create_task(backend.execute(make_task("small-chat"), None))
    await asyncio.sleep(0.02)
    embed = await backend.execute(make_task("embed-a", kind=InferenceKind.EMBEDDING, bodies=({"input": "x"},)), None)
    assert time.monotonic() - started >= 0.2  # waited for the load of "small"
    assert not embed.load.loaded
    await loading


async def test_batch_of_embeddings_answers_each_request() -> None:
    backend = make_backend()
    result = await backend.execute(
        make_task("embed-b", kind=InferenceKind.EMBEDDING, bodies=({"input": "a"}, {"input": ["b", "c"]})), None
    )
    assert [len(b["data"]) for b in result.bodies] == [1, 2]
    assert result.service_s == pytest.approx(0.01 * (0.75 + 0.25 * 3))


async def test_streaming_emits_chunks_and_answers_empty() -> None:
    backend = make_backend()
    chunks: list[dict[str, Any]] = []

    async def emit(data: dict[str, Any]) -> None:
        chunks.append(data)

    result = await backend.execute(make_task("big-chat"), emit)
    assert result.bodies == ({},) and 2 <= len(chunks) <= 9
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


async def test_created_is_the_wall_clocks_unix_time() -> None:
    profile = DeviceProfile(device="cuda:0", vram_total_mb=20480, vram_used_mb=0, speed=1.0, slots=1, gpu_index=0)
    backend = open_backend(
        "simulated", BackendConfig(worker_id="w", host="box", profile=profile, catalog=make_catalog())
    )
    before = int(time.time())

    result = await backend.execute(make_task("big-chat"), None)

    assert before <= result.bodies[0]["created"] <= time.time()


@pytest.mark.parametrize(
    ("extra", "choices", "finish", "completion_tokens"),
    [
        ({}, 1, "stop", 8),
        ({"n": 2}, 2, "stop", 16),
        ({"n": 3, "max_tokens": 3}, 3, "length", 9),
        ({"max_completion_tokens": 2, "max_tokens": 5}, 1, "length", 2),
    ],
)
async def test_answers_honour_n_and_the_token_cap(
    extra: dict[str, Any], choices: int, finish: str, completion_tokens: int
) -> None:
    backend = make_backend()
    body = {"messages": [{"role": "user", "content": "hello there"}], **extra}

    result = await backend.execute(make_task("big-chat", bodies=(body,)), None)

    [answer] = result.bodies
    assert [c["index"] for c in answer["choices"]] == list(range(choices))
    assert {c["finish_reason"] for c in answer["choices"]} == {finish}
    assert answer["usage"]["completion_tokens"] == completion_tokens


async def test_a_stream_asked_for_usage_ends_with_it() -> None:
    backend = make_backend()
    chunks: list[dict[str, Any]] = []

    async def emit(data: dict[str, Any]) -> None:
        chunks.append(data)

    body = {"messages": [{"role": "user", "content": "hi"}], "n": 2, "stream_options": {"include_usage": True}}
    await backend.execute(make_task("big-chat", bodies=(body,)), emit)

    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2 * 7
    assert {c["choices"][0]["index"] for c in chunks[:-1]} == {0, 1}


async def test_failures_are_operation_failed() -> None:
    backend = make_backend(fail_rate=1.0)
    with pytest.raises(OperationFailed, match="simulated failure on cuda:0"):
        await backend.execute(make_task("big-chat"), None)
    # The failure freed the group again: nothing is left in use.
    assert backend.gpu.plan_load("other", in_use=()).evict == ("big",)


def test_models_this_worker_cannot_serve_are_not_found() -> None:
    backend = make_backend(24564)
    with pytest.raises(NotFound, match="'nope' is not in the model-group catalog of worker w"):
        backend.group_for("nope")
    with pytest.raises(GroupTooLarge, match="'huge' needs 40960 MiB"):
        backend.group_for("huge-chat")
    assert backend.group_for("embed-b") == "embed"


def test_default_group_must_fit() -> None:
    backend = make_backend(4096)
    with pytest.raises(ConfigError, match="default group cannot be loaded on cuda:0.*'big' needs"):
        backend.check_group("big")
    with pytest.raises(ConfigError, match="'nope' is not in"):
        backend.check_group("nope")
    backend.check_group("small")


def test_unknown_backend_lists_the_valid_ones() -> None:
    profile = DeviceProfile(device="cpu", vram_total_mb=16384, vram_used_mb=0, speed=0.1, slots=1)
    with pytest.raises(ConfigError, match="unknown worker backend 'tpu'; valid: llamacpp, openai, simulated"):
        open_backend("tpu", BackendConfig(worker_id="w", host="h", profile=profile, catalog=make_catalog()))
