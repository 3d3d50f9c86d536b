"""The openai backend: forwards tasks to an OpenAI-compatible server (vLLM, llama.cpp, Ollama, ...).

The upstream owns its memory, so there is no group management here: what it serves is what
``GET /models`` lists, asked at start and every ``upstream_models_interval_s``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, ClassVar

import httpx

from services.worker.backends.base import BackendConfig, ChunkSink, Execution, LoadResult
from services.worker.core.responses import input_items
from services.worker.core.status import BackendState
from shared.contracts import InferenceKind, WorkerTask
from shared.errors import ConfigError, InvalidRequest, NotFound, OperationFailed

log = logging.getLogger("gpuplane.worker.openai")

PATHS: dict[InferenceKind, str] = {
    InferenceKind.CHAT: "chat/completions",
    InferenceKind.COMPLETION: "completions",
    InferenceKind.EMBEDDING: "embeddings",
}
MESSAGE_CHARS = 500
MODELS_TIMEOUT_S = 10.0
"""Listing models is quick on any upstream; one that hangs must not hold up the worker's start."""


class OpenAIBackend:
    NAME: ClassVar[str] = "openai"

    def __init__(self, config: BackendConfig) -> None:
        if not config.upstream_url:
            raise ConfigError(
                "the openai backend needs GPUPLANE_UPSTREAM_URL (--upstream-url), e.g. http://127.0.0.1:8000/v1"
            )
        self._config = config
        self._url = config.upstream_url.rstrip("/")
        headers = {"Authorization": f"Bearer {config.upstream_api_key}"} if config.upstream_api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self._url + "/", timeout=config.upstream_timeout_s, headers=headers
        )
        self._models: tuple[str, ...] = ()
        self._models_known = False
        self._current: str | None = None
        self._last_problem: str | None = None

    @property
    def models(self) -> tuple[str, ...]:
        return self._models

    async def start(self) -> None:
        await self._refresh_quietly()

    async def maintain(self) -> None:
        while True:
            await asyncio.sleep(self._config.upstream_models_interval_s)
            await self._refresh_quietly()

    async def close(self) -> None:
        await self._client.aclose()

    async def refresh_models(self) -> tuple[str, ...]:
        """Ask the upstream what it serves; ``OperationFailed`` if it cannot say."""
        limit_s = min(MODELS_TIMEOUT_S, self._config.upstream_timeout_s)
        answer = await self._call("GET", "models", None, timeout_s=limit_s)
        data = answer.get("data")
        if not isinstance(data, list):
            raise OperationFailed(f"upstream {self._url}/models answered without a data list")
        models = tuple(str(item["id"]) for item in data if isinstance(item, dict) and "id" in item)
        if models != self._models or not self._models_known:
            log.info("upstream %s serves: %s", self._url, ", ".join(models) or "nothing")
            self._models = models
            self._models_known = True
            self._config.on_change()
        return models

    async def _refresh_quietly(self) -> None:
        # A background refresh outlives an upstream that restarts: say so once, keep the last list.
        try:
            await self.refresh_models()
            self._last_problem = None
        except (OperationFailed, InvalidRequest) as exc:
            if str(exc) != self._last_problem:
                log.warning("cannot list the upstream's models: %s", exc)
                self._last_problem = str(exc)

    def group_for(self, model: str) -> str:
        if self._models_known and model not in self._models:
            served = ", ".join(self._models) or "nothing"
            raise NotFound(
                f"the upstream {self._url} does not serve model {model!r}; it serves: {served}", field="model"
            )
        return self._config.catalog.group_id_for(model)

    def check_group(self, group: str) -> None:
        """The upstream decides what it loads; any group is fine to name."""

    async def preload(self, group: str) -> LoadResult:
        return LoadResult(group=group)

    async def execute(self, task: WorkerTask, emit: ChunkSink | None) -> Execution:
        group = self.group_for(task.model)
        started = time.monotonic()
        if emit is not None:
            await self._stream(task, task.bodies[0], emit)
            bodies: tuple[dict[str, Any], ...] = ({},)
        elif task.kind is InferenceKind.EMBEDDING:
            bodies = await self._embeddings(task)
        else:
            bodies = tuple(
                [await self._call("POST", PATHS[task.kind], {**body, "model": task.model}) for body in task.bodies]
            )
        self._current = group
        return Execution(bodies=bodies, load=LoadResult(group=group), service_s=time.monotonic() - started)

    async def _embeddings(self, task: WorkerTask) -> tuple[dict[str, Any], ...]:
        """One upstream request for the whole batch, split back per body by index."""
        counts = [len(input_items(body)) for body in task.bodies]
        inputs = [item for body in task.bodies for item in input_items(body)]
        extra = {k: v for k, v in task.bodies[0].items() if k != "input"}
        payload = {**extra, "model": task.model, "input": inputs}
        answer = await self._call("POST", PATHS[InferenceKind.EMBEDDING], payload)
        data = answer.get("data")
        if not isinstance(data, list) or len(data) != len(inputs):
            got = len(data) if isinstance(data, list) else "no"
            raise OperationFailed(f"upstream {self._url}/embeddings answered {got} embeddings for {len(inputs)} inputs")
        ordered = sorted(data, key=lambda item: int(item.get("index", 0)) if isinstance(item, dict) else 0)
        raw_usage = answer.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        bodies: list[dict[str, Any]] = []
        start = 0
        for count in counts:
            part = [{**item, "index": i} for i, item in enumerate(ordered[start : start + count])]
            bodies.append(
                {
                    "object": "list",
                    "data": part,
                    "model": answer.get("model", task.model),
                    "usage": _share(usage, count, len(inputs)),
                }
            )
            start += count
        return tuple(bodies)

    async def _call(
        self, method: str, path: str, payload: dict[str, Any] | None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        limit_s = timeout_s if timeout_s is not None else self._config.upstream_timeout_s
        try:
            response = await self._client.request(method, path, json=payload, timeout=limit_s)
        except httpx.TimeoutException as exc:
            raise OperationFailed(f"upstream {self._url}/{path} did not answer within {limit_s:g} s") from exc
        except httpx.HTTPError as exc:
            raise OperationFailed(f"upstream {self._url}/{path} is unreachable: {type(exc).__name__}: {exc}") from exc
        self._raise_for(response, path)
        try:
            answer = response.json()
        except ValueError as exc:
            raise OperationFailed(f"upstream {self._url}/{path} answered something that is not JSON") from exc
        if not isinstance(answer, dict):
            raise OperationFailed(f"upstream {self._url}/{path} answered JSON that is not an object")
        return answer

    async def _stream(self, task: WorkerTask, body: dict[str, Any], emit: ChunkSink) -> None:
        path = PATHS[task.kind]
        payload = {**body, "model": task.model, "stream": True}
        try:
            async with self._client.stream("POST", path, json=payload) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._raise_for(response, path)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise OperationFailed(f"upstream {self._url}/{path} streamed a line that is not JSON") from exc
                    await emit(chunk)
        except httpx.TimeoutException as exc:
            raise OperationFailed(
                f"upstream {self._url}/{path} did not answer within {self._config.upstream_timeout_s:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise OperationFailed(f"upstream {self._url}/{path} failed: {type(exc).__name__}: {exc}") from exc

    def _raise_for(self, response: httpx.Response, path: str) -> None:
        status = response.status_code
        if status < 400:
            return
        message = _upstream_message(response)
        if status < 500:
            raise InvalidRequest(f"upstream {self._url}/{path} rejected the request ({status}): {message}")
        raise OperationFailed(f"upstream {self._url}/{path} failed ({status}): {message}")

    def state(self) -> BackendState:
        catalog = self._config.catalog
        return BackendState(
            groups_loaded=tuple(dict.fromkeys(catalog.group_id_for(m) for m in self._models)),
            current_group=self._current,
            models=self._models,
            vram_used_mb=self._config.profile.vram_used_mb if self._config.profile.gpu_uuid else None,
        )


def _upstream_message(response: httpx.Response) -> str:
    """The error an OpenAI-style server explains itself with, else the start of its body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:MESSAGE_CHARS] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:MESSAGE_CHARS]
        if isinstance(error, str):
            return error[:MESSAGE_CHARS]
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key])[:MESSAGE_CHARS]
    return json.dumps(body)[:MESSAGE_CHARS]


def _share(usage: dict[str, Any], count: int, total: int) -> dict[str, int]:
    """This body's part of a batch's token usage, in proportion to its inputs."""
    out: dict[str, int] = {}
    for key in ("prompt_tokens", "total_tokens"):
        value = usage.get(key)
        if isinstance(value, int):
            out[key] = round(value * count / total) if total else 0
    return out
