"""Builders for the worker's tests: a tiny catalog with fast groups, settings and tasks."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml

from shared.contracts import InferenceKind, Priority, WorkerTask
from shared.modelgroups import ModelCatalog

# Latencies are tiny so that service tests run in milliseconds; sizes mirror config/model_groups.yml.
CATALOG: dict[str, Any] = {
    "cpu_reload_fraction": 0.2,
    "groups": [
        {
            "id": "big",
            "vram_gb": 16,
            "load_time_s": 0.02,
            "models": [
                {"id": "big-chat", "kind": "chat", "latency_s": 0.01},
                {"id": "big-text", "kind": "completion", "latency_s": 0.01},
            ],
        },
        {"id": "other", "vram_gb": 15, "load_time_s": 0.02, "models": [{"id": "other-chat", "latency_s": 0.01}]},
        {"id": "small", "vram_gb": 3, "load_time_s": 0.02, "models": [{"id": "small-chat", "latency_s": 0.01}]},
        {
            "id": "embed",
            "vram_gb": 1,
            "load_time_s": 0.02,
            "models": [
                {"id": "embed-a", "kind": "embedding", "latency_s": 0.01},
                {"id": "embed-b", "kind": "embedding", "latency_s": 0.01},
            ],
        },
        {"id": "huge", "vram_gb": 40, "load_time_s": 0.02, "models": [{"id": "huge-chat", "latency_s": 0.01}]},
    ],
}


def make_catalog(**changes: Any) -> ModelCatalog:
    return ModelCatalog.model_validate({**CATALOG, **changes})


def write_catalog(directory: Path, **changes: Any) -> Path:
    path = directory / "model_groups.yml"
    path.write_text(yaml.safe_dump({**CATALOG, **changes}))
    return path


_task_ids = itertools.count(1)


def make_task(
    model: str = "big-chat",
    *,
    kind: InferenceKind = InferenceKind.CHAT,
    bodies: tuple[dict[str, Any], ...] | None = None,
    group: str = "big",
    priority: Priority = Priority.NORMAL,
    exclusive: bool = False,
    stream_subject: str | None = None,
    text: str = "hello there",
    max_tokens: int | None = None,
) -> WorkerTask:
    """A task for one chat request by default; ``bodies`` makes a batch (one request id each)."""
    if bodies is None:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        bodies = (body,)
    number = next(_task_ids)
    return WorkerTask(
        task_id=f"t{number}",
        request_ids=tuple(f"r{number}-{i}" for i in range(len(bodies))),
        kind=kind,
        model=model,
        group=group,
        bodies=bodies,
        priority=priority,
        exclusive=exclusive,
        stream_subject=stream_subject,
    )
