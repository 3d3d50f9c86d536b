"""Per-model, per-worker service estimates: learned, prior from speed, per token, backlog, batching."""

from __future__ import annotations

import dataclasses

import pytest

from services.router.core.estimates import (
    BATCHING_SLOWDOWN,
    PRIOR_WEIGHT,
    SETTLED_SAMPLES,
    Estimates,
    slowdown,
)
from services.router.core.policies.estimate import KV_FULL, expected_s
from shared.contracts import EngineSignals
from tests.builders import make_placement_request, make_snapshot, make_worker_status
from tests.services.router.core.helpers import pools_of, record, rng

SPEEDS = {"fast": 1.0, "slow": 0.25}


def _learned(samples: dict[tuple[str, str], float], count: int = SETTLED_SAMPLES) -> Estimates:
    """Estimates fed ``count`` identical answers per (worker, model)."""
    estimates = Estimates()
    for (worker, model), seconds in samples.items():
        for _ in range(count):
            estimates.observe(worker, model, seconds)
    return estimates


def _alone(estimates: Estimates, worker: str, model: str, *, catalog_s: float = 0.5, prompt: float = 0.0,
           max_tokens: int | None = None) -> float:
    return estimates.alone_s(worker, model, SPEEDS[worker], SPEEDS.get, prompt_tokens=prompt, max_tokens=max_tokens,
                             catalog_s=catalog_s)


@pytest.mark.parametrize(
    ("samples", "worker", "model", "expected"),
    [
        pytest.param({}, "fast", "a", 0.5, id="nothing-seen-catalog"),
        pytest.param({}, "slow", "a", 2.0, id="nothing-seen-catalog-over-speed"),
        pytest.param({("fast", "a"): 1.0, ("fast", "b"): 0.2}, "fast", "a", 1.0, id="per-model-a"),
        pytest.param({("fast", "a"): 1.0, ("fast", "b"): 0.2}, "fast", "b", 0.2, id="per-model-b"),
        pytest.param({("fast", "a"): 1.0}, "slow", "a", 4.0, id="prior-from-the-other-by-speed"),
        pytest.param({("slow", "a"): 4.0}, "fast", "a", 1.0, id="prior-from-a-slower-one"),
        pytest.param({("fast", "a"): 1.0, ("slow", "a"): 3.0}, "slow", "a", 3.0, id="own-settled-figure-wins"),
    ],
)
def test_alone_s(samples: dict[tuple[str, str], float], worker: str, model: str, expected: float) -> None:
    assert _alone(_learned(samples), worker, model) == pytest.approx(expected)


def test_a_few_own_answers_lean_on_the_prior() -> None:
    estimates = _learned({("fast", "a"): 1.0})
    estimates.observe("slow", "a", 2.0)  # one lucky answer; the others' figure says 4.0 s
    own = 2.0
    assert _alone(estimates, "slow", "a") == pytest.approx((own + PRIOR_WEIGHT * 4.0) / (1 + PRIOR_WEIGHT))


def test_the_first_answer_is_averaged_with_what_was_expected() -> None:
    estimates = Estimates()
    estimates.observe("fast", "a", 1.0, prior_s=0.5)
    assert estimates.by_model["a"]["fast"].alone_s == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("concurrency", "batching", "alone"),
    [
        pytest.param(1, BATCHING_SLOWDOWN, 1.1, id="alone"),
        pytest.param(3, BATCHING_SLOWDOWN, 1.1 / (1 + 2 * BATCHING_SLOWDOWN), id="three-running-slower"),
        pytest.param(3, 0.0, 1.1, id="independent-slots"),
    ],
)
def test_observations_are_normalized_to_one_request_alone(concurrency: int, batching: float, alone: float) -> None:
    estimates = Estimates()
    estimates.observe("fast", "a", 1.1, concurrency=concurrency, batching=batching)
    assert estimates.by_model["a"]["fast"].alone_s == pytest.approx(alone)


def test_per_token_fit_sizes_a_request() -> None:
    """Answers whose time is 0.2 s + 1 ms per prompt token + 20 ms per completion token."""
    estimates = Estimates()
    for i in range(60):
        prompt, completion = 100 + 37 * (i % 11), 10 + 13 * (i % 7)
        estimates.observe("fast", "a", 0.2 + 0.001 * prompt + 0.02 * completion, prompt_tokens=prompt,
                          completion_tokens=completion)
    short = _alone(estimates, "fast", "a", prompt=100, max_tokens=10)
    long_prompt = _alone(estimates, "fast", "a", prompt=400, max_tokens=10)
    # The ridge that keeps the fit sane pulls the rates a little towards 0: within 8%.
    assert short == pytest.approx(0.2 + 0.1 + 0.2, rel=0.08)
    assert long_prompt == pytest.approx(0.2 + 0.4 + 0.2, rel=0.08)
    assert long_prompt - short == pytest.approx(0.3, rel=0.1)
    # Without max_tokens, the answers' usual length (their moving average) stands in.
    assert _alone(estimates, "fast", "a", prompt=100) > short


def test_slowdown() -> None:
    assert [slowdown(c, 0.1) for c in (0, 1, 2, 4)] == pytest.approx([1.0, 1.0, 1.1, 1.3])


# --------------------------------------------------------------------------- the estimate a policy compares

REQ = make_placement_request(group="g", expected_latency_s=1.0, group_load_s=5.0)


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        pytest.param(make_snapshot(groups=("g",)), 1.0, id="idle"),
        # Two queued ahead of one slot, one of 3 s and one of 1 s: wait 4 s, not 2 x this request's 1 s.
        pytest.param(dataclasses.replace(make_snapshot(groups=("g",), load=2), service_s=1.0, backlog_s=4.0), 5.0,
                     id="backlog-per-model"),
        pytest.param(dataclasses.replace(make_snapshot(groups=("g",), slots=4, load=1), batching=0.1), 1.1,
                     id="batching-one-neighbour"),
        pytest.param(dataclasses.replace(make_snapshot(groups=("g",), slots=4, load=4), batching=0.1,
                                         backlog_s=4.0), 1.0 * 1.3 / 4 + 1.3, id="batching-full"),
        pytest.param(dataclasses.replace(make_snapshot(groups=("g",), slots=4), kv_cache_usage=KV_FULL), 1.0 + 1.0 / 4,
                     id="kv-cache-full-has-no-free-slot"),
        pytest.param(dataclasses.replace(make_snapshot(), coming_load_s=6.0, groups_coming=frozenset({"g"})), 7.0,
                     id="group-coming-no-second-switch"),
        pytest.param(dataclasses.replace(make_snapshot(), vram_free_mb=100), 11.0, id="switch-that-evicts-twice"),
    ],
)
def test_expected_s(snapshot: object, expected: float) -> None:
    assert expected_s(snapshot, dataclasses.replace(REQ, group_vram_mb=1000)) == pytest.approx(expected)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- what Pools feeds the estimate

def _placement(model: str, request_id: str, latency: float) -> object:
    return make_placement_request(model, request_id=request_id, group="g", expected_latency_s=latency)


def test_backlog_is_the_sum_of_each_sent_requests_estimate() -> None:
    pools = pools_of(make_worker_status(slots=1, groups=("g",), models=("big", "small")))
    pools.on_sent("w0", 0.0, request=_placement("big", "r1", 3.0))  # type: ignore[arg-type]
    pools.on_sent("w0", 0.0, request=_placement("small", "r2", 0.5))  # type: ignore[arg-type]
    snap = pools.snapshot(record(pools), _placement("small", "r3", 0.5))  # type: ignore[arg-type]
    assert (snap.load, snap.backlog_s, snap.service_s) == (2, pytest.approx(3.5), pytest.approx(0.5))
    pools.on_done("w0", 1.0, ok=True, request_id="r1", service_s=2.0)
    snap = pools.snapshot(record(pools), _placement("big", "r4", 3.0))  # type: ignore[arg-type]
    assert snap.backlog_s == pytest.approx(0.5)
    # Own figure 2.5 s (the answer averaged with the 3 s expected) beside the catalog's 3 s weighted as two answers.
    assert snap.service_s == pytest.approx((2 * 2.5 + 2 * 3.0) / 4)


@pytest.mark.parametrize(
    ("queued", "service_s", "learned"),
    [
        pytest.param(False, None, True, id="elapsed-when-it-started-at-once"),
        pytest.param(True, None, False, id="elapsed-includes-a-wait-not-learned"),
        pytest.param(True, 0.7, True, id="reported-service-always-learned"),
    ],
)
def test_what_an_answer_teaches(queued: bool, service_s: float | None, learned: bool) -> None:
    pools = pools_of(make_worker_status(slots=1, groups=("g",), models=("a",), in_flight=1 if queued else 0))
    pools.on_sent("w0", 0.0, request=_placement("a", "r1", 0.5))  # type: ignore[arg-type]
    pools.on_done("w0", 2.0, ok=True, request_id="r1", service_s=service_s)
    assert pools.estimates.measured("w0", "a") is learned


@pytest.mark.parametrize(
    ("engine", "load", "slots"),
    [
        pytest.param(None, 1, 2, id="no-engine-figures"),
        pytest.param(EngineSignals(kind="llamacpp", requests_running=2, requests_waiting=3, slots_total=4), 5, 4,
                     id="engine-counts-other-clients"),
        pytest.param(EngineSignals(kind="vllm", requests_running=0), 1, 2, id="engine-below-reported"),
    ],
)
def test_engine_signals_feed_the_load(engine: EngineSignals | None, load: int, slots: int) -> None:
    status = make_worker_status(slots=2, in_flight=1, backend="openai").model_copy(update={"engine": engine})
    pools = pools_of(status)
    snap = pools.snapshot(record(pools))
    assert (snap.load, snap.slots) == (load, slots)


def test_equal_idle_batching_engines_share() -> None:
    statuses = [make_worker_status(w, device=f"cuda:{i}", slots=4, groups=("g",), backend="openai")
                for i, w in enumerate(("a", "b"))]
    pools = pools_of(*statuses)
    from services.router.core.policies import make_policy

    policy = make_policy("affinity")
    picks = []
    for i in range(4):
        decision = pools.place(_placement("model-a", f"r{i}", 0.5), 0.0, policy, rng())  # type: ignore[arg-type]
        picks.append(decision.worker_id)  # type: ignore[union-attr]
        pools.on_sent(decision.worker_id, 0.0, request=_placement("model-a", f"r{i}", 0.5))  # type: ignore[union-attr, arg-type]
    assert sorted(picks) == ["a", "a", "b", "b"]


@pytest.mark.parametrize(
    ("slowdown_seen", "learned"),
    [
        pytest.param(2.0, 1.0, id="a-cpu-engine-shares-its-thread"),
        pytest.param(1.05, 0.05, id="a-gpu-batches-almost-for-free"),
        pytest.param(9.0, 1.5, id="noise-is-capped"),
    ],
)
def test_a_workers_batching_slowdown_is_learned_from_answers_that_ran_beside_another(
    slowdown_seen: float, learned: float
) -> None:
    pools = pools_of(make_worker_status("w0", backend="openai", slots=2))
    worker = pools.workers["w0"]
    assert worker.batching() == pytest.approx(0.1)  # the default until it has answered beside others
    for _ in range(6):
        worker.learn_batching(seconds=slowdown_seen, alone_s=1.0, concurrency=2)
    assert worker.batching() == pytest.approx(learned)


def test_alone_or_on_the_simulated_backend_nothing_is_learned() -> None:
    pools = pools_of(make_worker_status("w0", backend="simulated", slots=2), make_worker_status("w1", slots=2))
    for worker_id in ("w0", "w1"):
        pools.workers[worker_id].learn_batching(seconds=3.0, alone_s=1.0, concurrency=2 if worker_id == "w0" else 1)
    assert pools.workers["w0"].batching() == 0.0 and pools.workers["w1"].batching_samples == 0
