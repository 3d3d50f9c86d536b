"""Routing policies: the expected-time estimate, affinity with give-way, p2c, the classic balancers
and the registry. Policies are pure, so every test hands them snapshots and a seeded rng."""

from __future__ import annotations

import random

import pytest

from services.router.core.model import Choice, PlacementRequest, WorkerSnapshot
from services.router.core.policies import POLICIES, check_policy_name, make_policy
from services.router.core.policies.affinity import AffinityLeastLoaded
from services.router.core.policies.estimate import ERROR_PENALTY, expected_s, service_s, switch_s
from services.router.core.policies.p2c import PowerOfTwoChoices
from services.router.core.policies.simple import LeastConnections, RandomChoice, RoundRobin
from shared.contracts import Route
from shared.errors import ConfigError
from tests.builders import make_placement_request, make_snapshot

GROUP = "group-a"
ALL_NAMES = ("affinity", "least_connections", "p2c", "random", "round_robin")

# Small figures keep the arithmetic exact: loading the group costs 1 s, one request 0.5 s.
REQ = make_placement_request(group=GROUP, group_load_s=1.0, expected_latency_s=0.5, cpu_reload_fraction=0.25)


def rng(seed: int = 7) -> random.Random:
    return random.Random(seed)


def choose(policy_name: str, workers: list[WorkerSnapshot], request: PlacementRequest = REQ) -> Choice | None:
    return make_policy(policy_name).choose(request, workers, rng())


# --------------------------------------------------------------------------- estimate


@pytest.mark.parametrize(
    ("worker", "expected"),
    [
        pytest.param(make_snapshot(groups=(GROUP,)), 0.5, id="holder-idle"),
        pytest.param(make_snapshot(groups=(GROUP,), load=1), 1.0, id="holder-one-running-one-slot"),
        pytest.param(make_snapshot(groups=(GROUP,), load=3), 2.0, id="holder-three-ahead"),
        pytest.param(make_snapshot(groups=(GROUP,), slots=2, load=1), 0.5, id="free-slot-starts-at-once"),
        pytest.param(make_snapshot(groups=(GROUP,), slots=2, load=2), 0.75, id="work-spread-over-slots"),
        pytest.param(make_snapshot(groups=(GROUP,), slots=4, load=7), 1.0, id="four-slots-four-ahead"),
        pytest.param(make_snapshot(), 1.5, id="switch-from-disk"),
        pytest.param(make_snapshot(cpu_cached_groups=(GROUP,)), 0.75, id="switch-from-cpu-cache"),
        pytest.param(make_snapshot(groups=(GROUP,), latency_avg_s=2.0), 2.0, id="measured-latency-wins"),
        pytest.param(make_snapshot(groups=(GROUP,), load=1, latency_avg_s=2.0), 4.0, id="measured-latency-wait"),
        pytest.param(make_snapshot(groups=(GROUP,), error_rate=0.5), 0.5 * 3, id="half-errors-three-times"),
        pytest.param(make_snapshot(groups=(GROUP,), error_rate=0.25), 0.5 * 2, id="quarter-errors-twice"),
        pytest.param(make_snapshot(load=1, error_rate=0.5), (0.5 + 1.0 + 0.5) * 3, id="all-terms"),
    ],
)
def test_expected_s(worker: WorkerSnapshot, expected: float) -> None:
    assert expected_s(worker, REQ) == pytest.approx(expected)


def test_error_penalty_is_documented_figure() -> None:
    assert ERROR_PENALTY == 4.0


@pytest.mark.parametrize(
    ("worker", "service", "switch"),
    [
        pytest.param(make_snapshot(groups=(GROUP,)), 0.5, 0.0, id="holder-catalog-guess"),
        pytest.param(make_snapshot(latency_avg_s=0.2), 0.2, 1.0, id="measured-disk"),
        pytest.param(make_snapshot(groups=(GROUP,), cpu_cached_groups=(GROUP,)), 0.5, 0.0, id="holds-and-cached"),
        pytest.param(make_snapshot(cpu_cached_groups=("other",)), 0.5, 1.0, id="other-group-cached"),
        pytest.param(make_snapshot(groups=(GROUP,), speed=0.25), 2.0, 0.0, id="slow-gpu-unmeasured"),
        pytest.param(make_snapshot(groups=(GROUP,), speed=2.0), 0.25, 0.0, id="fast-gpu-unmeasured"),
        pytest.param(make_snapshot(groups=(GROUP,), speed=0.25, latency_avg_s=0.3), 0.3, 0.0, id="measured-wins"),
    ],
)
def test_service_and_switch(worker: WorkerSnapshot, service: float, switch: float) -> None:
    assert service_s(worker, REQ) == pytest.approx(service)
    assert switch_s(worker, REQ) == pytest.approx(switch)


# --------------------------------------------------------------------------- affinity


def holder(load: int = 0, worker_id: str = "h", **kw: object) -> WorkerSnapshot:
    return make_snapshot(worker_id, groups=(GROUP,), load=load, **kw)  # type: ignore[arg-type]


def other(load: int = 0, worker_id: str = "o", **kw: object) -> WorkerSnapshot:
    return make_snapshot(worker_id, groups=("group-b",), load=load, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["affinity", "p2c"])
def test_before_anything_is_measured_the_faster_gpu_is_expected_to_finish_sooner(name: str) -> None:
    """The reference pair: cuda:0 (speed 1.0) and the 4 GB card (0.08), neither holding the group."""
    fast, slow = make_snapshot("fast", speed=1.0), make_snapshot("slow", device="cuda:1", speed=0.08)
    picks = {make_policy(name).choose(REQ, [slow, fast], rng(seed)).worker_id for seed in range(20)}  # type: ignore[union-attr]
    assert picks == {"fast"}


def test_affinity_picks_the_holder() -> None:
    choice = choose("affinity", [other(), holder(load=1)])
    assert choice == Choice("h", Route.AFFINITY, "holds group-a (~1.00 s)")


# other: switch 1.0 + service 0.5 = 1.5 s; give way when the holder needs more than 2 × 1.5 = 3 s,
# that is when the holder has more than 5 requests on its one slot (0.5 s each, plus its own 0.5 s).
@pytest.mark.parametrize(
    ("holder_load", "factor", "winner", "route"),
    [
        pytest.param(0, 2.0, "h", Route.AFFINITY, id="holder-idle"),
        pytest.param(2, 2.0, "h", Route.AFFINITY, id="holder-a-bit-busier-keeps-it"),
        pytest.param(5, 2.0, "h", Route.AFFINITY, id="exactly-at-factor-keeps-it"),
        pytest.param(6, 2.0, "o", Route.LEAST_LOADED, id="much-busier-gives-way"),
        pytest.param(20, 2.0, "o", Route.LEAST_LOADED, id="swamped-gives-way"),
        pytest.param(6, 4.0, "h", Route.AFFINITY, id="larger-factor-keeps-it"),
        pytest.param(2, 1.0, "h", Route.AFFINITY, id="factor-one-tie-keeps-it"),
        pytest.param(3, 1.0, "o", Route.LEAST_LOADED, id="factor-one-gives-way-when-slower"),
    ],
)
def test_affinity_gives_way_only_when_much_busier(holder_load: int, factor: float, winner: str, route: Route) -> None:
    choice = AffinityLeastLoaded(factor).choose(REQ, [holder(holder_load), other()], rng())
    assert choice is not None
    assert (choice.worker_id, choice.route) == (winner, route)


def test_give_way_reason_names_both_workers() -> None:
    choice = choose("affinity", [holder(6), other()])
    assert choice is not None
    assert choice.reason == "affinity gave way: h holds group-a but needs ~3.50 s, o ~1.50 s with the load"


@pytest.mark.parametrize(
    ("cached", "winner"),
    [
        # cached: the other needs 0.25 + 0.5 = 0.75 s, so the holder's 2.0 s is over 2 × 0.75 s: it gives way
        pytest.param(True, "o", id="cpu-cached-switch-is-cheap"),
        # not cached: the other needs 1.0 + 0.5 = 1.5 s, and 2.0 s is within 2 × 1.5 s: the holder keeps it
        pytest.param(False, "h", id="disk-switch-is-dear"),
    ],
)
def test_cpu_cached_group_makes_switching_cheaper(cached: bool, winner: str) -> None:
    o = other(cpu_cached_groups=(GROUP,) if cached else ())
    h = holder(load=3)  # 2.0 s
    choice = AffinityLeastLoaded(give_way_factor=2.0).choose(REQ, [h, o], rng())
    assert choice is not None and choice.worker_id == winner


def test_among_non_holders_the_cpu_cached_one_wins() -> None:
    choice = choose("affinity", [other(worker_id="a"), other(worker_id="b", cpu_cached_groups=(GROUP,))])
    assert choice is not None
    assert (choice.worker_id, choice.route) == ("b", Route.LEAST_LOADED)
    assert choice.reason == "soonest to finish (~0.75 s, loads group-a)"


@pytest.mark.parametrize(
    ("workers", "winner"),
    [
        pytest.param([holder(0, "a", slots=2), holder(1, "b", slots=2)], "a", id="same-time-fewer-requests"),
        pytest.param([holder(1, "a"), holder(0, "b")], "b", id="less-loaded"),
        pytest.param([holder(3, "a", slots=4), holder(1, "b")], "a", id="slots-free-beat-fewer-requests"),
        pytest.param([holder(4, "a", slots=2), holder(1, "b")], "b", id="slots-full-queue-spread"),
        pytest.param(
            [holder(0, "fast", latency_avg_s=0.1), holder(0, "slow", latency_avg_s=1.0)], "fast", id="fast-idle"
        ),
        pytest.param(
            [holder(5, "fast", latency_avg_s=0.1), holder(0, "slow", latency_avg_s=1.0)],
            "fast",
            id="fast-a-bit-loaded-still-wins",
        ),
        pytest.param(
            [holder(10, "fast", latency_avg_s=0.1), holder(0, "slow", latency_avg_s=1.0)],
            "slow",
            id="fast-loaded-enough-slow-used",
        ),
        pytest.param([holder(0, "a", error_rate=0.5), holder(0, "b")], "b", id="error-rate-penalised"),
        pytest.param([holder(0, "a", error_rate=0.5), holder(3, "b")], "a", id="error-rate-vs-load"),
        pytest.param([holder(0, "a", latency_avg_s=0.4), holder(0, "b")], "a", id="measured-beats-catalog-guess"),
    ],
)
def test_least_loaded_weighting_among_holders(workers: list[WorkerSnapshot], winner: str) -> None:
    choice = choose("affinity", workers)
    assert choice is not None
    assert (choice.worker_id, choice.route) == (winner, Route.AFFINITY)


@pytest.mark.parametrize(
    ("workers", "winner"),
    [
        pytest.param([other(0, "a"), other(1, "b")], "a", id="idle-first"),
        pytest.param([other(0, "a", latency_avg_s=3.0), other(1, "b")], "b", id="slow-avoided"),
        pytest.param([other(0, "a", error_rate=1.0), other(2, "b")], "b", id="failing-avoided"),
    ],
)
def test_least_loaded_without_holders(workers: list[WorkerSnapshot], winner: str) -> None:
    choice = choose("affinity", workers)
    assert choice is not None
    assert (choice.worker_id, choice.route) == (winner, Route.LEAST_LOADED)


def test_affinity_default_give_way_factor() -> None:
    assert AffinityLeastLoaded().give_way_factor == 1.1
    assert PowerOfTwoChoices().give_way_factor == 1.1


# --------------------------------------------------------------------------- every policy


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_policy_returns_none_without_candidates(name: str) -> None:
    assert make_policy(name).choose(REQ, [], rng()) is None


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_policy_picks_the_only_candidate(name: str) -> None:
    choice = make_policy(name).choose(REQ, [other(worker_id="only")], rng())
    assert choice is not None and choice.worker_id == "only"


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_policy_picks_one_of_the_candidates(name: str) -> None:
    workers = [holder(i, f"w{i}") for i in range(5)] + [other(i, f"x{i}") for i in range(5)]
    policy = make_policy(name)
    r = rng(3)
    for _ in range(20):
        choice = policy.choose(REQ, workers, r)
        assert choice is not None and choice.worker_id in {w.worker_id for w in workers}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_policy_is_deterministic_given_the_rng(name: str) -> None:
    workers = [holder(i % 3, f"w{i}") for i in range(6)] + [other(i % 2, f"x{i}") for i in range(6)]

    def run() -> list[str]:
        policy, r = make_policy(name), rng(11)
        return [c.worker_id for c in (policy.choose(REQ, workers, r) for _ in range(30)) if c is not None]

    assert run() == run()


# --------------------------------------------------------------------------- ties


TIE_POLICIES = ("affinity", "p2c", "least_connections")
"""The policies that rank workers (round_robin and random never compare them)."""


@pytest.mark.parametrize("name", TIE_POLICIES)
@pytest.mark.parametrize(
    "workers",
    [
        pytest.param([holder(0, "a"), holder(0, "b")], id="idle-holders"),
        pytest.param([other(0, "a"), other(0, "b")], id="idle-others"),
        pytest.param([holder(2, "a", slots=4), holder(2, "b", slots=4)], id="equal-load-free-slots"),
        pytest.param([holder(3, "a"), holder(3, "b")], id="equal-queues"),
    ],
)
def test_a_tie_is_broken_by_the_rng_not_the_worker_id(name: str, workers: list[WorkerSnapshot]) -> None:
    policy = make_policy(name)
    picks = [policy.choose(REQ, workers, random.Random(seed)) for seed in range(40)]
    assert {c.worker_id for c in picks if c is not None} == {"a", "b"}


@pytest.mark.parametrize("name", ["affinity", "least_connections"])  # p2c's draw of two depends on the order
def test_a_tie_does_not_depend_on_the_candidates_order(name: str) -> None:
    workers = [holder(1, f"w{i}", slots=2) for i in range(4)]
    forward = [make_policy(name).choose(REQ, workers, random.Random(seed)) for seed in range(20)]
    backward = [make_policy(name).choose(REQ, workers[::-1], random.Random(seed)) for seed in range(20)]
    assert forward == backward


@pytest.mark.parametrize(
    ("name", "workers"),
    [
        pytest.param("affinity", [holder(0, "a"), holder(1, "b")], id="affinity"),
        pytest.param("affinity", [holder(0, "a", slots=2), holder(1, "b", slots=2)], id="affinity-same-time"),
        pytest.param("least_connections", [other(0, "a"), other(1, "b")], id="least_connections"),
    ],
)
def test_a_clear_winner_draws_nothing(name: str, workers: list[WorkerSnapshot]) -> None:
    r = rng()
    before = r.getstate()
    choice = make_policy(name).choose(REQ, workers, r)
    assert choice is not None and choice.worker_id == "a"
    assert r.getstate() == before


# --------------------------------------------------------------------------- p2c


def test_p2c_respects_affinity() -> None:
    workers = [holder(0, "h")] + [other(0, f"o{i}") for i in range(6)]
    policy = PowerOfTwoChoices()
    r = rng()
    for _ in range(20):
        choice = policy.choose(REQ, workers, r)
        assert choice is not None and (choice.worker_id, choice.route) == ("h", Route.AFFINITY)


def test_p2c_gives_way_like_affinity() -> None:
    choice = PowerOfTwoChoices().choose(REQ, [holder(6), other()], rng())
    assert choice is not None and (choice.worker_id, choice.route) == ("o", Route.LEAST_LOADED)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 42])
def test_p2c_picks_the_better_of_the_two_it_draws(seed: int) -> None:
    holders = [holder(load, f"h{load}") for load in (4, 0, 2, 1, 3)]
    others = [other(load + 10, f"o{load}") for load in (3, 1, 2)]
    twin = random.Random(seed)
    drawn_holders = twin.sample(holders, 2)
    twin.sample(others, 2)  # p2c draws the others too
    expected = min(drawn_holders, key=lambda w: (w.load, w.worker_id)).worker_id
    r = random.Random(seed)
    choice = PowerOfTwoChoices().choose(REQ, holders + others, r)
    assert choice is not None and choice.worker_id == expected
    assert r.getstate() == twin.getstate()


def test_p2c_never_picks_the_worst_of_three_but_not_always_the_best() -> None:
    workers = [holder(0, "best"), holder(2, "mid"), holder(4, "worst")]
    picks = set()
    for seed in range(50):
        choice = PowerOfTwoChoices().choose(REQ, workers, random.Random(seed))
        assert choice is not None
        picks.add(choice.worker_id)
    assert picks == {"best", "mid"}


def test_p2c_draws_nothing_for_two_or_fewer() -> None:
    r = rng()
    before = r.getstate()
    PowerOfTwoChoices().choose(REQ, [holder(0, "a"), holder(1, "b"), other(0, "c")], r)
    assert r.getstate() == before


# --------------------------------------------------------------------------- classic balancers


def test_round_robin_cycles_in_worker_id_order() -> None:
    workers = [other(0, "w2"), holder(0, "w0"), other(5, "w1")]
    policy = RoundRobin()
    picks = [policy.choose(REQ, workers, rng()) for _ in range(7)]
    assert [c.worker_id for c in picks if c is not None] == ["w0", "w1", "w2", "w0", "w1", "w2", "w0"]
    assert {(c.route, c.reason) for c in picks if c is not None} == {(Route.LEAST_LOADED, "round robin")}


def test_round_robin_ignores_affinity_and_load() -> None:
    policy = RoundRobin()
    first = policy.choose(REQ, [holder(0, "b"), other(9, "a")], rng())
    assert first is not None and first.worker_id == "a"


def test_random_is_seeded_and_independent_of_candidate_order() -> None:
    workers = [other(0, f"w{i}") for i in range(5)]

    def picks(order: list[WorkerSnapshot], seed: int) -> list[str]:
        r = random.Random(seed)
        return [c.worker_id for c in (RandomChoice().choose(REQ, order, r) for _ in range(20)) if c is not None]

    assert picks(workers, 5) == picks(list(reversed(workers)), 5)
    assert len(set(picks(workers, 5))) > 1
    assert picks(workers, 5) != picks(workers, 6)


@pytest.mark.parametrize(
    ("workers", "winner"),
    [
        pytest.param([other(3, "a"), other(1, "b"), other(2, "c")], "b", id="min-load"),
        pytest.param([holder(2, "h"), other(1, "o")], "o", id="ignores-affinity"),
        pytest.param([other(0, "slow", latency_avg_s=9.0), other(1, "fast")], "slow", id="ignores-speed"),
    ],
)
def test_least_connections_picks_min_load(workers: list[WorkerSnapshot], winner: str) -> None:
    choice = LeastConnections().choose(REQ, workers, rng())
    assert choice is not None and choice.worker_id == winner
    assert choice.route is Route.LEAST_LOADED


def test_least_connections_reason() -> None:
    choice = LeastConnections().choose(REQ, [other(3, "a")], rng())
    assert choice is not None and choice.reason == "fewest requests (3)"


# --------------------------------------------------------------------------- registry


def test_registry_holds_all_policies() -> None:
    assert tuple(sorted(POLICIES)) == ALL_NAMES


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        pytest.param("affinity", AffinityLeastLoaded, id="affinity"),
        pytest.param("p2c", PowerOfTwoChoices, id="p2c"),
        pytest.param("round_robin", RoundRobin, id="round_robin"),
        pytest.param("random", RandomChoice, id="random"),
        pytest.param("least_connections", LeastConnections, id="least_connections"),
    ],
)
def test_make_policy_by_name(name: str, cls: type) -> None:
    policy = make_policy(name)
    assert isinstance(policy, cls)
    assert policy.NAME == name
    assert check_policy_name(name) == name


@pytest.mark.parametrize("name", ["", "Affinity", "least-connections", "roundrobin", "nope"])
def test_unknown_policy_name_lists_valid_ones(name: str) -> None:
    for call in (check_policy_name, make_policy):
        with pytest.raises(ConfigError) as info:
            call(name)
        message = str(info.value)
        assert repr(name) in message
        assert f"valid: {', '.join(ALL_NAMES)}" in message


@pytest.mark.parametrize("name", ["affinity", "p2c"])
def test_make_policy_passes_give_way_factor(name: str) -> None:
    assert make_policy(name, give_way_factor=3.5).give_way_factor == 3.5  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_make_policy_returns_fresh_instances(name: str) -> None:
    assert make_policy(name) is not make_policy(name)


def test_fresh_round_robin_starts_over() -> None:
    workers = [other(0, "a"), other(0, "b")]
    first = make_policy("round_robin")
    first.choose(REQ, workers, rng())
    second = make_policy("round_robin")
    choice = second.choose(REQ, workers, rng())
    assert choice is not None and choice.worker_id == "a"
