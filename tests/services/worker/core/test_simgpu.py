from __future__ import annotations

import random
import statistics
from typing import Any

import pytest

from services.worker.core.simgpu import GroupTooLarge, LoadPlan, MustWait, SimGpu, StalePlan, UnknownGroup
from shared.contracts import InferenceKind
from shared.errors import NotFound
from tests.services.worker.helpers import make_catalog

CHAT = InferenceKind.CHAT
COMPLETION = InferenceKind.COMPLETION
EMBEDDING = InferenceKind.EMBEDDING


def make_gpu(vram_mb: int = 20480, *, speed: float = 1.0, max_cpu_cached: int = 2, used_mb: int = 0) -> SimGpu:
    return SimGpu(vram_mb=vram_mb, speed=speed, catalog=make_catalog(), max_cpu_cached=max_cpu_cached, used_mb=used_mb)


def load(gpu: SimGpu, *groups: str) -> list[LoadPlan]:
    plans = []
    for group in groups:
        plan = gpu.plan_load(group)
        gpu.commit(plan)
        plans.append(plan)
    return plans


def test_first_load_costs_the_catalogs_load_time_and_becomes_current() -> None:
    gpu = make_gpu()
    [plan] = load(gpu, "big")
    assert plan == LoadPlan(group="big", load_s=0.02, evict=(), from_cpu_cache=False, already_loaded=False)
    assert (gpu.loaded, gpu.current_group, gpu.vram_used_mb, gpu.switches) == (("big",), "big", 16384, 1)


def test_loaded_group_needs_no_load() -> None:
    gpu = make_gpu()
    load(gpu, "big", "small")
    plan = gpu.plan_load("big")
    assert plan.already_loaded and plan.load_s == 0 and plan.evict == ()
    gpu.commit(plan)
    assert gpu.loaded == ("small", "big") and gpu.current_group == "big" and gpu.switches == 2


@pytest.mark.parametrize(
    ("touch", "expected_evict"),
    [
        pytest.param(None, ("big",), id="least recently loaded goes"),
        pytest.param("big", ("small", "big"), id="least recently used goes first, then the next"),
    ],
)
def test_lru_eviction(touch: str | None, expected_evict: tuple[str, ...]) -> None:
    gpu = make_gpu(20480)
    load(gpu, "big", "small")  # 16 + 3 GB of 20
    if touch:
        gpu.touch(touch)
    plan = gpu.plan_load("other")  # 15 GB
    assert plan.evict == expected_evict
    gpu.commit(plan)
    assert "other" in gpu.loaded and not set(expected_evict) & set(gpu.loaded)
    assert gpu.cpu_cached == expected_evict


def test_reload_from_cpu_cache_costs_the_reload_fraction() -> None:
    gpu = make_gpu(20480)
    load(gpu, "big", "other")
    plan = gpu.plan_load("big")
    assert plan.from_cpu_cache and plan.load_s == pytest.approx(0.2 * 0.02) and plan.evict == ("other",)
    gpu.commit(plan)
    assert gpu.cpu_cached == ("other",)


@pytest.mark.parametrize(("max_cpu_cached", "kept"), [(0, ()), (1, ("other",)), (2, ("big", "other"))])
def test_cpu_cache_is_bounded_lru(max_cpu_cached: int, kept: tuple[str, ...]) -> None:
    gpu = make_gpu(17 * 1024, max_cpu_cached=max_cpu_cached)  # one big group at a time
    load(gpu, "big", "other", "small")
    assert gpu.cpu_cached == kept
    assert gpu.plan_load("big").from_cpu_cache is ("big" in kept)


def test_group_larger_than_the_device_is_refused_with_sizes() -> None:
    gpu = make_gpu(24564, used_mb=1024)
    assert not gpu.can_hold("huge") and gpu.can_hold("big")
    with pytest.raises(GroupTooLarge, match=r"'huge' needs 40960 MiB.*23540 MiB for models \(24564 MiB in all\)"):
        gpu.plan_load("huge")
    assert issubclass(GroupTooLarge, NotFound)


def test_vram_used_by_others_counts() -> None:
    gpu = make_gpu(17 * 1024, used_mb=2048)
    with pytest.raises(GroupTooLarge):
        gpu.plan_load("big")
    assert gpu.holdable_groups() == ("other", "small", "embed")


def test_unknown_group_is_not_found() -> None:
    with pytest.raises(UnknownGroup, match="'nope' is not in the model-group catalog"):
        make_gpu().plan_load("nope")


def test_must_wait_when_only_groups_in_use_could_make_room() -> None:
    gpu = make_gpu(20480)
    load(gpu, "big", "small")
    with pytest.raises(MustWait) as caught:
        gpu.plan_load("other", in_use={"big"})
    assert caught.value.blocking == ("big",)
    assert gpu.plan_load("embed", in_use={"big", "small"}).evict == ()


def test_groups_in_use_are_skipped_when_others_make_room() -> None:
    gpu = make_gpu(20480)
    load(gpu, "small", "big")
    plan = gpu.plan_load("embed", in_use={"small"})
    assert plan.evict == ()  # 16 + 3 + 1 = 20 GB fits
    gpu.commit(plan)
    gpu.touch("small")
    assert gpu.plan_load("other", in_use={"small"}).evict == ("big",)


def test_stale_plan_is_refused() -> None:
    gpu = make_gpu(20480)
    load(gpu, "big")
    plan = gpu.plan_load("small")
    gpu.commit(plan)
    with pytest.raises(StalePlan):
        gpu.commit(plan)


def test_holdable_models_are_every_model_of_every_group_that_fits() -> None:
    assert make_gpu(4096).holdable_models() == ("small-chat", "embed-a", "embed-b")
    assert "huge-chat" not in make_gpu(24564).holdable_models()


def chat(max_tokens: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


@pytest.mark.parametrize(
    ("model", "kind", "bodies", "factor"),
    [
        pytest.param("big-chat", CHAT, [chat()], 1.0, id="chat without max_tokens"),
        pytest.param("big-chat", CHAT, [chat(256)], 2.0, id="max_tokens 256"),
        pytest.param("big-chat", CHAT, [chat(1)], 0.25, id="tiny max_tokens clamped"),
        pytest.param("big-chat", CHAT, [chat(10**6)], 16.0, id="huge max_tokens clamped"),
        pytest.param("big-chat", CHAT, [chat(True)], 1.0, id="a bool is not a size"),
        pytest.param("big-text", COMPLETION, [{"prompt": "x", "max_tokens": 64}], 0.5, id="completion"),
        pytest.param("embed-a", EMBEDDING, [{"input": "x"}], 1.0, id="one input"),
        pytest.param("embed-a", EMBEDDING, [{"input": ["x", "y", "z"]}], 1.5, id="three inputs"),
        pytest.param("embed-a", EMBEDDING, [{"input": [1, 2, 3]}], 1.0, id="token ids are one input"),
        pytest.param("embed-a", EMBEDDING, [{"input": "x"}] * 4, 1.75, id="a batch of four shares the cost"),
    ],
)
def test_service_time_factors(model: str, kind: InferenceKind, bodies: list[dict[str, Any]], factor: float) -> None:
    gpu = make_gpu()
    assert gpu.bodies_service_s(model, kind, bodies) == pytest.approx(0.01 * factor)


def test_batch_of_four_embeddings_costs_far_less_than_four_singles() -> None:
    gpu = make_gpu()
    single = gpu.service_s("embed-a", EMBEDDING, {"input": "x"}, 1)
    assert gpu.service_s("embed-a", EMBEDDING, {"input": "x"}, 4) < 0.5 * 4 * single


def test_speed_divides_service_time() -> None:
    assert make_gpu(speed=2.0).service_s("big-chat", CHAT, chat(), 1) == pytest.approx(0.005)


def test_no_rng_or_no_jitter_is_deterministic() -> None:
    gpu = make_gpu()
    rng = random.Random(1)
    assert gpu.service_s("big-chat", CHAT, chat(), 1, None, 0.5) == gpu.service_s("big-chat", CHAT, chat(), 1, rng, 0)
    assert rng.random() == random.Random(1).random()  # nothing drawn


def test_jitter_is_seeded_and_averages_to_the_catalog_latency() -> None:
    gpu = make_gpu()
    draws = [gpu.service_s("big-chat", CHAT, chat(), 1, random.Random(7), 0.3) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(42)
    samples = [gpu.service_s("big-chat", CHAT, chat(), 1, rng, 0.3) for _ in range(20000)]
    assert len(set(samples)) > 1000
    assert statistics.fmean(samples) == pytest.approx(0.01, rel=0.03)


def test_unknown_model_has_no_service_time() -> None:
    with pytest.raises(UnknownGroup, match="model 'nope'"):
        make_gpu().service_s("nope", CHAT, chat(), 1)
