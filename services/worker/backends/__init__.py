"""Inference backends and the one registry of them.

``BACKENDS`` maps a name (``GPUPLANE_BACKEND``) to the class that serves it; ``open_backend``
fails on an unknown name listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

from services.worker.backends.base import BackendConfig, ChunkSink, Execution, InferenceBackend, LoadResult
from services.worker.backends.openai import OpenAIBackend
from services.worker.backends.simulated import SimulatedBackend
from shared.errors import ConfigError

__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "BackendConfig",
    "ChunkSink",
    "Execution",
    "InferenceBackend",
    "LoadResult",
    "open_backend",
]

BACKENDS: dict[str, Callable[[BackendConfig], InferenceBackend]] = {
    SimulatedBackend.NAME: SimulatedBackend,
    OpenAIBackend.NAME: OpenAIBackend,
}
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)


def unknown_backend_message(name: str) -> str:
    return f"unknown worker backend {name!r}; valid: {', '.join(BACKEND_NAMES)}"


def open_backend(name: str, config: BackendConfig) -> InferenceBackend:
    """The backend called ``name``; ``ConfigError`` for an unknown name or a missing setting."""
    factory = BACKENDS.get(name)
    if factory is None:
        raise ConfigError(unknown_backend_message(name))
    return factory(config)
