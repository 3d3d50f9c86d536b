from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from services.worker.settings import WorkerSettings
from shared.errors import ConfigError

ALIASED = (
    "DEVICE",
    "DEVICES",
    "NUM_WORKERS_PER_GPU",
    "DEFAULT_GROUP",
    "LAZY_LOAD_MODEL",
    "MAX_CPU_CACHED_MODELS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing from the surrounding shell leaks into what a test sets."""
    for name in ALIASED:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"GPUPLANE_{name}", raising=False)
    for name in ("GPUPLANE_SLOTS", "GPUPLANE_GPU", "GPUPLANE_BACKEND", "GPUPLANE_WORKER_ID"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"GPUPLANE_SLOTS": "2"}, "slots", 2),
        ({"NUM_WORKERS_PER_GPU": "3"}, "slots", 3),
        ({"GPUPLANE_NUM_WORKERS_PER_GPU": "4"}, "slots", 4),
        ({"GPUPLANE_SLOTS": "2", "NUM_WORKERS_PER_GPU": "3"}, "slots", 2),
        ({"DEVICES": "cuda:0,cuda:1"}, "devices", "cuda:0,cuda:1"),
        ({"GPUPLANE_DEVICES": "cuda:1"}, "devices", "cuda:1"),
        ({"DEVICE": "cuda:0"}, "device", "cuda:0"),
        ({"GPUPLANE_DEVICE": "cpu"}, "device", "cpu"),
        ({"DEFAULT_GROUP": "llama3-8b"}, "default_group", "llama3-8b"),
        ({"GPUPLANE_DEFAULT_GROUP": "phi3-mini", "DEFAULT_GROUP": "llama3-8b"}, "default_group", "phi3-mini"),
        ({"LAZY_LOAD_MODEL": "true"}, "lazy_load_model", True),
        ({"GPUPLANE_LAZY_LOAD_MODEL": "1"}, "lazy_load_model", True),
        ({"MAX_CPU_CACHED_MODELS": "5"}, "max_cpu_cached_models", 5),
        ({"GPUPLANE_MAX_CPU_CACHED_MODELS": "0"}, "max_cpu_cached_models", 0),
        ({"GPUPLANE_GPU": "1"}, "gpu", 1),
        ({"GPUPLANE_UPSTREAM_URL": "http://x/v1"}, "upstream_url", "http://x/v1"),
        ({"GPUPLANE_TASK_CONCURRENCY_LIMIT": "8"}, "task_concurrency_limit", 8),
    ],
)
def test_env_names(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str, value: Any) -> None:
    for name, raw in env.items():
        monkeypatch.setenv(name, raw)
    assert getattr(WorkerSettings(), field) == value


def test_flags_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUM_WORKERS_PER_GPU", "3")
    monkeypatch.setenv("DEFAULT_GROUP", "phi3-mini")
    settings = WorkerSettings(slots=1, default_group="embeddings")
    assert (settings.slots, settings.default_group) == (1, "embeddings")


def test_defaults() -> None:
    s = WorkerSettings(host_name="box")
    assert (s.backend, s.slots, s.lazy_load_model, s.max_cpu_cached_models, s.status_interval_s) == (
        "simulated",
        None,
        False,
        2,
        1.0,
    )
    assert (s.latency_jitter, s.fail_rate, s.task_concurrency_limit, s.upstream_timeout_s) == (0.2, 0.0, 256, 600)


@pytest.mark.parametrize(
    ("kwargs", "env", "devices"),
    [
        ({"gpu": 2}, {}, ("cuda:2",)),
        ({"device": "cpu"}, {}, ("cpu",)),
        ({"gpu": 1, "device": "cuda:1"}, {}, ("cuda:1",)),
        ({}, {"DEVICES": "cuda:0,cuda:1,cuda:0"}, ("cuda:0", "cuda:1")),
        ({"device": "cuda:1"}, {"DEVICES": "cuda:0,cuda:1"}, ("cuda:1",)),
        ({}, {"DEVICE": "cuda:3"}, ("cuda:3",)),
    ],
)
def test_device_list(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], env: dict[str, str], devices: tuple[str, ...]
) -> None:
    for name, raw in env.items():
        monkeypatch.setenv(name, raw)
    assert WorkerSettings(**kwargs).device_list() == devices


def test_no_device_is_an_error_at_start_not_at_parse() -> None:
    settings = WorkerSettings()
    with pytest.raises(ConfigError, match="--gpu N or --device"):
        settings.device_list()


def test_gpu_and_device_must_agree() -> None:
    with pytest.raises(ConfigError, match="name different devices"):
        WorkerSettings(gpu=0, device="cuda:1")


def test_bad_device_in_env_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICES", "cuda:0,gpu1")
    with pytest.raises(ConfigError, match="'gpu1'"):
        WorkerSettings()


def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(ValidationError, match="unknown worker backend 'tpu'; valid: llamacpp, openai, simulated"):
        WorkerSettings(backend="tpu")


def test_worker_id_defaults_from_host_and_device() -> None:
    assert WorkerSettings(host_name="box").worker_id_for("cuda:1") == "box-cuda1"
    assert WorkerSettings(host_name="box", worker_id="w7").worker_id_for("cuda:1") == "w7"
