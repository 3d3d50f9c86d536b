"""Inference backends and the one registry of them.

``REGISTRY`` maps a name (``GPUPLANE_BACKEND``) to the class that serves it; ``open_backend``
fails on an unknown name listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from services.worker.backends.base import BackendConfig, ChunkSink, Execution, InferenceBackend, LoadResult
from services.worker.backends.llamacpp import LlamaCppBackend
from services.worker.backends.openai import OpenAIBackend
from services.worker.backends.simulated import SimulatedBackend
from shared.plugins import Registry

__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "REGISTRY",
    "BackendConfig",
    "ChunkSink",
    "Execution",
    "InferenceBackend",
    "LoadResult",
    "open_backend",
]

REGISTRY: Registry[[BackendConfig], InferenceBackend] = Registry("worker backend")
REGISTRY.register(LlamaCppBackend.NAME, LlamaCppBackend)
REGISTRY.register(OpenAIBackend.NAME, OpenAIBackend)
REGISTRY.register(SimulatedBackend.NAME, SimulatedBackend)

BACKENDS: Mapping[str, Callable[[BackendConfig], InferenceBackend]] = REGISTRY.view()
"""The registry as a read-only mapping: name -> the class that serves it."""
BACKEND_NAMES: tuple[str, ...] = REGISTRY.names()


def unknown_backend_message(name: str) -> str:
    return REGISTRY.unknown(name)


def open_backend(name: str, config: BackendConfig) -> InferenceBackend:
    """The backend called ``name``; ``ConfigError`` for an unknown name or a missing setting."""
    return REGISTRY.make(name, config)
