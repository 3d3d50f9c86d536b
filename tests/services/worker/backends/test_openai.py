"""The openai backend against a real (small, scripted) OpenAI-compatible HTTP server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from services.stack.embedded import free_port
from services.worker.backends import BackendConfig, open_backend
from services.worker.backends.openai import OpenAIBackend, openai_base_url
from services.worker.core.device import DeviceProfile
from shared.contracts import InferenceKind
from shared.errors import ConfigError, InvalidRequest, NotFound, OperationFailed
from tests.services.worker.backends.upstream import FakeUpstream
from tests.services.worker.helpers import make_catalog, make_task

PROFILE = DeviceProfile(
    device="cuda:0",
    vram_total_mb=24564,
    vram_used_mb=1024,
    speed=1.0,
    slots=3,
    gpu_index=0,
    gpu_uuid="GPU-a",
    gpu_name="NVIDIA RTX A5500",
)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    server.start()
    yield server
    server.stop()


def make_backend(url: str | None, **config: Any) -> OpenAIBackend:
    backend = open_backend(
        "openai",
        BackendConfig(worker_id="w", host="box", profile=PROFILE, catalog=make_catalog(), upstream_url=url, **config),
    )
    assert isinstance(backend, OpenAIBackend)
    return backend


@pytest.fixture
async def backend(upstream: FakeUpstream) -> AsyncIterator[OpenAIBackend]:
    backend = make_backend(upstream.url, upstream_api_key="sekrit", upstream_timeout_s=5)
    await backend.start()
    yield backend
    await backend.close()


def chat(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "temperature": 0}


async def test_models_come_from_the_upstream_and_map_to_groups(backend: OpenAIBackend) -> None:
    state = backend.state()
    assert state.models == ("up-chat", "embed-a", "embed-b")
    assert state.groups_loaded == ("up-chat", "embed")  # a model outside the catalog is its own group
    assert state.vram_used_mb == 1024 and state.cpu_cached_groups == ()


async def test_chat_is_forwarded_with_the_model_and_the_key(backend: OpenAIBackend, upstream: FakeUpstream) -> None:
    result = await backend.execute(make_task("up-chat", bodies=(chat("hello"),)), None)
    [body] = result.bodies
    assert body["choices"][0]["message"]["content"] == "upstream heard: hello"
    [sent] = upstream.posted("/v1/chat/completions")
    assert sent["model"] == "up-chat" and sent["temperature"] == 0
    assert {s.authorization for s in upstream.seen} == {"Bearer sekrit"}
    assert result.load.group == "up-chat" and not result.load.loaded and result.service_s > 0
    assert backend.state().current_group == "up-chat"


async def test_completion_goes_to_completions(backend: OpenAIBackend) -> None:
    result = await backend.execute(
        make_task("up-chat", kind=InferenceKind.COMPLETION, bodies=({"prompt": "once"},)), None
    )
    assert result.bodies[0]["choices"][0]["text"] == "completion of once"


async def test_a_batch_of_embeddings_is_one_upstream_request_split_back(
    backend: OpenAIBackend, upstream: FakeUpstream
) -> None:
    bodies = ({"input": "a"}, {"input": ["bb", "ccc"]}, {"input": "dddd"})
    result = await backend.execute(make_task("embed-a", kind=InferenceKind.EMBEDDING, bodies=bodies), None)
    [sent] = upstream.posted("/v1/embeddings")
    assert sent["input"] == ["a", "bb", "ccc", "dddd"]
    # The upstream answered in reverse order; each body gets its own inputs, indexed from 0.
    assert [[d["embedding"][0] for d in b["data"]] for b in result.bodies] == [[1.0], [2.0, 3.0], [4.0]]
    assert [[d["index"] for d in b["data"]] for b in result.bodies] == [[0], [0, 1], [0]]
    assert [b["usage"]["prompt_tokens"] for b in result.bodies] == [2, 4, 2]


async def test_streaming_relays_each_sse_chunk(backend: OpenAIBackend, upstream: FakeUpstream) -> None:
    chunks: list[dict[str, Any]] = []

    async def emit(data: dict[str, Any]) -> None:
        chunks.append(data)

    result = await backend.execute(make_task("up-chat", bodies=(chat("go"),)), emit)
    assert result.bodies == ({},)
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["up", "stream", "ed"]
    assert upstream.posted("/v1/chat/completions")[0]["stream"] is True


async def test_a_broken_stream_fails_after_what_was_relayed(backend: OpenAIBackend) -> None:
    chunks: list[dict[str, Any]] = []

    async def emit(data: dict[str, Any]) -> None:
        chunks.append(data)

    with pytest.raises(OperationFailed, match="streamed a line that is not JSON"):
        await backend.execute(make_task("up-chat", bodies=(chat("break stream"),)), emit)
    assert len(chunks) == 1


@pytest.mark.parametrize(
    ("said", "error", "message"),
    [
        ("fail 400", InvalidRequest, r"rejected the request \(400\): max_tokens must be at most 4096"),
        ("fail 500", OperationFailed, r"failed \(500\): CUDA out of memory"),
        ("fail 503 text", OperationFailed, r"failed \(503\): upstream overloaded"),
    ],
)
async def test_upstream_errors_are_typed(
    backend: OpenAIBackend, said: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await backend.execute(make_task("up-chat", bodies=(chat(said),)), None)
    with pytest.raises(error, match=message):
        await backend.execute(make_task("up-chat", bodies=(chat(said),)), _discard)


async def _discard(_: dict[str, Any]) -> None:
    """A stream sink that keeps nothing."""


async def test_a_slow_upstream_times_out(upstream: FakeUpstream) -> None:
    upstream.slow_s = 1.0
    backend = make_backend(upstream.url, upstream_timeout_s=0.2)
    try:
        with pytest.raises(OperationFailed, match="did not answer within 0.2 s"):
            await backend.execute(make_task("up-chat", bodies=(chat("slow"),)), None)
    finally:
        await backend.close()


async def test_a_hanging_model_list_does_not_hold_up_the_start(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.worker.backends.openai.MODELS_TIMEOUT_S", 0.1)
    upstream.models_delay_s = 1.0
    backend = make_backend(upstream.url, upstream_timeout_s=600)
    try:
        started = time.monotonic()
        await backend.start()
        assert time.monotonic() - started < 0.8 and backend.state().models == ()
    finally:
        await backend.close()


async def test_an_unreachable_upstream_does_not_stop_the_start_and_fails_tasks() -> None:
    backend = make_backend(f"http://127.0.0.1:{free_port()}/v1")
    try:
        await backend.start()
        assert backend.state().models == ()
        assert backend.group_for("anything") == "anything"  # what it serves is not known yet
        with pytest.raises(OperationFailed, match="is unreachable: ClientConnectorError"):
            await backend.execute(make_task("anything", bodies=(chat("hi"),)), None)
    finally:
        await backend.close()


async def test_a_model_the_upstream_does_not_serve_is_not_found(backend: OpenAIBackend) -> None:
    with pytest.raises(NotFound, match="does not serve model 'big-chat'; it serves: up-chat, embed-a, embed-b"):
        backend.group_for("big-chat")


async def test_models_are_asked_again_periodically(upstream: FakeUpstream) -> None:
    changes: list[int] = []
    backend = make_backend(upstream.url, upstream_models_interval_s=0.02, on_change=lambda: changes.append(1))
    await backend.start()
    upstream.models = ["up-chat", "new-model"]
    loop = asyncio.create_task(backend.maintain())
    try:
        for _ in range(200):
            if "new-model" in backend.state().models:
                break
            await asyncio.sleep(0.01)
        assert backend.state().models == ("up-chat", "new-model") and len(changes) == 2
    finally:
        loop.cancel()
        await backend.close()


def test_the_openai_backend_needs_an_upstream_url() -> None:
    with pytest.raises(ConfigError, match="needs GPUPLANE_UPSTREAM_URL"):
        make_backend(None)


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
        (" http://llm:8000/ ", "http://llm:8000/v1"),
        ("https://host/openai/v1", "https://host/openai/v1"),
    ],
)
def test_the_upstream_url_is_normalized_to_an_openai_base_url(given: str, base: str) -> None:
    assert openai_base_url(given) == base


async def test_the_upstream_is_the_engine_unless_it_needs_a_key(upstream: FakeUpstream) -> None:
    open_one = make_backend(upstream.url.removesuffix("/v1"))
    keyed = make_backend(upstream.url, upstream_api_key="sekrit")
    try:
        assert open_one.engine_url == upstream.url and keyed.engine_url is None
        await open_one.start()  # and it calls the normalized URL itself
        assert open_one.state().models == ("up-chat", "embed-a", "embed-b")
    finally:
        await open_one.close()
        await keyed.close()
