"""The openai backend: forwards tasks to an OpenAI-compatible server (vLLM, llama.cpp, Ollama, ...).

The upstream owns its memory, so there is no group management here: what it serves is what
``GET /models`` lists, asked at start and every ``upstream_models_interval_s``.

The upstream is the engine: the worker advertises its URL (``engine_url``) for the data plane to
call directly, unless it needs an API key (a secret that must not travel on NATS); then requests
come through the worker, and this backend forwards them with one pooled aiohttp session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, ClassVar

import aiohttp

from services.worker.backends.base import BackendConfig, ChunkSink, Execution, LoadResult
from services.worker.core.responses import input_items
from services.worker.core.signals import LLAMACPP, signals_from
from services.worker.core.status import BackendState
from shared.contracts import EngineSignals, InferenceKind, WorkerTask
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
PROBE_TIMEOUT_S = 2.0
"""An engine too busy to list its metrics within this is busy: the last figures stand."""
STREAM_LINE_MAX_BYTES = 16 * 1024 * 1024
"""A streamed line longer than this is not an SSE event: the upstream is broken."""


def openai_base_url(url: str) -> str:
    """``url`` as an OpenAI client's base URL: no trailing slash, ending in ``/v1``."""
    base = url.strip().rstrip("/")
    return base if base.endswith("/v1") else f"{base}/v1"


class OpenAIBackend:
    NAME: ClassVar[str] = "openai"

    def __init__(self, config: BackendConfig) -> None:
        if not config.upstream_url:
            raise ConfigError(
                "the openai backend needs GPUPLANE_UPSTREAM_URL (--upstream-url), e.g. http://127.0.0.1:8000/v1"
            )
        self._config = config
        self._url = openai_base_url(config.upstream_url)
        self._headers = {"Authorization": f"Bearer {config.upstream_api_key}"} if config.upstream_api_key else {}
        self._session: aiohttp.ClientSession | None = None
        """Made on first use (inside the event loop), kept for every call after."""
        self._models: tuple[str, ...] = ()
        self._models_known = False
        self._current: str | None = None
        self._last_problem: str | None = None
        self._signals: EngineSignals | None = None
        self._closed = False
        self._slots_served = True
        """Whether ``/slots`` may answer (llama.cpp without ``--slots`` says 501: not asked again)."""

    @property
    def models(self) -> tuple[str, ...]:
        return self._models

    @property
    def engine_url(self) -> str | None:
        """The upstream's base URL for the data plane to call directly; None when it needs the API key."""
        return None if self._config.upstream_api_key else self._url

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No connection limit: the worker's pool bounds the requests in flight. trust_env off: an
            # inference server is reached directly, and reading proxy settings costs on every call.
            self._session = aiohttp.ClientSession(
                headers=self._headers, connector=aiohttp.TCPConnector(limit=0), trust_env=False
            )
        return self._session

    def _timeout(self, total_s: float | None = None) -> aiohttp.ClientTimeout:
        """``upstream_timeout_s`` to connect and between reads (a long answer that keeps coming is fine)."""
        limit_s = self._config.upstream_timeout_s
        return aiohttp.ClientTimeout(total=total_s, connect=limit_s, sock_read=limit_s)

    async def start(self) -> None:
        await self._refresh_quietly()

    async def maintain(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._refresh_models_forever())
            if self._config.engine_probe_interval_s > 0:
                group.create_task(self._probe_forever())

    async def _refresh_models_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.upstream_models_interval_s)
            await self._refresh_quietly()

    async def _probe_forever(self) -> None:
        while True:
            await self.probe_engine()
            await asyncio.sleep(self._config.engine_probe_interval_s)

    @property
    def root_url(self) -> str:
        """The server's root, where engines serve ``/metrics``, ``/slots`` and ``/health``."""
        return self._url.removesuffix("/v1")

    async def probe_engine(self) -> EngineSignals | None:
        """Read the engine's own load figures (its metrics, and llama.cpp's slots); None when it gives none."""
        metrics = await self._get_text("metrics")
        kind_hint = signals_from(metrics).kind if metrics else None
        slots = await self._get_text("slots") if self._slots_served and kind_hint in (None, LLAMACPP) else None
        signals = signals_from(metrics, slots) if metrics or slots else None
        if signals != self._signals:
            before = self._signals
            self._signals = signals
            if before is None or signals is None or _load_of(before) != _load_of(signals):
                self._config.on_change()
        return signals

    async def _get_text(self, path: str) -> str | None:
        """``GET <root>/<path>``'s body, or None: engines that lack an endpoint are common, not an error."""
        if self._closed:
            return None
        try:
            async with self._client().get(
                f"{self.root_url}/{path}", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
            ) as response:
                if path == "slots" and response.status in (404, 501):
                    self._slots_served = False
                if response.status != 200:
                    return None
                return await response.text()
        except (TimeoutError, aiohttp.ClientError):
            return None

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()

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
            async with self._client().request(
                method, f"{self._url}/{path}", json=payload, timeout=self._timeout(timeout_s)
            ) as response:
                raw = await response.read()
                status, reason = response.status, response.reason
        except TimeoutError as exc:
            raise OperationFailed(f"upstream {self._url}/{path} did not answer within {limit_s:g} s") from exc
        except aiohttp.ClientConnectionError as exc:
            raise OperationFailed(f"upstream {self._url}/{path} is unreachable: {type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise OperationFailed(f"upstream {self._url}/{path} failed: {type(exc).__name__}: {exc}") from exc
        self._raise_for(status, reason, raw, path)
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise OperationFailed(f"upstream {self._url}/{path} answered something that is not JSON") from exc
        if not isinstance(answer, dict):
            raise OperationFailed(f"upstream {self._url}/{path} answered JSON that is not an object")
        return answer

    async def _stream(self, task: WorkerTask, body: dict[str, Any], emit: ChunkSink) -> None:
        path = PATHS[task.kind]
        payload = {**body, "model": task.model, "stream": True}
        try:
            async with self._client().post(f"{self._url}/{path}", json=payload, timeout=self._timeout()) as response:
                if response.status >= 400:
                    self._raise_for(response.status, response.reason, await response.read(), path)
                pending = b""
                async for piece in response.content.iter_any():
                    lines = (pending + piece).split(b"\n")
                    pending = lines.pop()
                    if len(pending) > STREAM_LINE_MAX_BYTES:
                        raise OperationFailed(f"upstream {self._url}/{path} streamed a line over 16 MiB")
                    for line in lines:
                        if await self._relay(line, path, emit):
                            return
                await self._relay(pending, path, emit)
        except TimeoutError as exc:
            raise OperationFailed(
                f"upstream {self._url}/{path} did not answer within {self._config.upstream_timeout_s:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise OperationFailed(f"upstream {self._url}/{path} failed: {type(exc).__name__}: {exc}") from exc

    async def _relay(self, line: bytes, path: str, emit: ChunkSink) -> bool:
        """Pass on one SSE line's chunk; True at ``[DONE]``. Comments and other fields are skipped."""
        if not line.startswith(b"data:"):
            return False
        data = line[len(b"data:") :].strip()
        if data == b"[DONE]":
            return True
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise OperationFailed(f"upstream {self._url}/{path} streamed a line that is not JSON") from exc
        await emit(chunk)
        return False

    def _raise_for(self, status: int, reason: str | None, raw: bytes, path: str) -> None:
        if status < 400:
            return
        message = _upstream_message(raw, reason or str(status))
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
            engine=self._signals,
        )


def _load_of(signals: EngineSignals) -> tuple[int | None, int | None, float | None]:
    """The figures a router places by: a change in these is worth a status now."""
    return signals.requests_running, signals.requests_waiting, signals.kv_cache_usage


def _upstream_message(raw: bytes, reason: str) -> str:
    """The error an OpenAI-style server explains itself with, else the start of its body."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:MESSAGE_CHARS] or reason
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
