"""bench/router: the simulation runs, its parts are right, and the report keeps what it does not own.

Correctness only: timings and the policies' figures are the benchmark's business
(docs/benchmarks.md), never asserted here.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

import pytest

from bench.router.fleet import CATALOG, EQUAL, FLEETS, PAIR, POPULARITY, Fleet, GpuSpec, ideal_capacity
from bench.router.measure import QUICK, Cell, Job, run_job
from bench.router.oracle import Oracle
from bench.router.overhead import CoreTimes, EndToEnd, Timing, decision_times
from bench.router.report import BEGIN, END, render, splice
from bench.router.sim import Simulation, Variant, make_requests
from bench.router.worker import SimWorker
from services.router.core.model import Choice, PlacementRequest, WorkerSnapshot
from services.router.core.policies import POLICIES
from shared.contracts import Route


@pytest.mark.parametrize("fleet", FLEETS)
@pytest.mark.parametrize("policy", [*POLICIES, Oracle.NAME])
def test_a_tiny_run_completes(fleet: str, policy: str) -> None:
    result = run_job(Job("default", fleet, 0.8, Variant(policy), seed=3, requests=120, warmup=30))

    assert len(result.latencies) == 120
    assert all(0 < x < math.inf for x in result.latencies)
    assert all(0 <= w <= x for w, x in zip(result.router_wait, result.latencies, strict=True))
    assert result.completed_in_window > 0 and result.window_s > 0
    assert sum(sum(per_gpu) for per_gpu in result.served.values()) == 120


def test_a_run_is_deterministic_per_seed() -> None:
    job = Job("default", "pair", 0.95, Variant("random"), seed=5, requests=150, warmup=20)

    first, second = run_job(job), run_job(job)

    assert first.latencies == second.latencies
    assert first.switches_in_window == second.switches_in_window


def test_groups_too_large_for_a_gpu_never_go_there() -> None:
    result = run_job(Job("default", "pair", 0.8, Variant("round_robin"), seed=1, requests=300, warmup=30))

    for group in ("chat-large", "chat-mid", "chat-small"):
        assert result.served.get(group, [0, 0])[1] == 0
    assert result.served["embed"][1] > 0


def test_poisson_arrivals_have_the_right_mean_rate_and_mix() -> None:
    rate = 7.5
    requests = make_requests(40000, rate, seed=11)

    gaps = [b.arrival - a.arrival for a, b in zip(requests, requests[1:], strict=False)]
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.02)
    assert statistics.stdev(gaps) == pytest.approx(1 / rate, rel=0.03)  # exponential: sd = mean
    shares = Counter(r.group for r in requests)
    for group, share in POPULARITY.items():
        assert shares[group] / len(requests) == pytest.approx(share, abs=0.01)


def test_arrivals_are_the_same_sequence_at_every_load_after_the_ramp() -> None:
    slow, fast = make_requests(500, 2.0, seed=4, ramp=100), make_requests(500, 4.0, seed=4, ramp=100)

    assert [r.group for r in slow] == [r.group for r in fast]
    assert [r.seed for r in slow] == [r.seed for r in fast]
    assert slow[-1].arrival - slow[100].arrival == pytest.approx(2 * (fast[-1].arrival - fast[100].arrival))


def test_ideal_capacity_by_hand() -> None:
    # Pair: only cuda:0 (3 slots x speed 1) can hold the chat groups, whose work per request is
    # 0.35 x 0.6 + 0.18 x 0.4 + 0.10 x 0.25 = 0.307 s: that binds before the whole fleet does.
    assert ideal_capacity(PAIR) == pytest.approx(3 / 0.307)
    # Four equal GPUs hold everything: 12 slot-seconds per second over 0.3375 s of work per request.
    assert ideal_capacity(EQUAL) == pytest.approx(12 / 0.3375)
    lone = Fleet("lone", "one small card", (GpuSpec(4, 0.5),))
    with pytest.raises(ValueError, match="can hold"):
        ideal_capacity(lone)


def test_the_oracle_knows_exactly_when_a_request_finishes() -> None:
    requests = make_requests(12, 50.0, seed=2)
    worker = SimWorker(0, GpuSpec(24, 1.0), CATALOG, jitter=0.5)
    for r in requests[:-1]:
        worker.submit(r, 0.0)
    last = requests[-1]

    predicted = worker.finish_time(last, 0.0)
    worker.submit(last, 0.0)
    finished = None
    while finished is None:
        finished = next((d.at for d in worker.step() if d.request is last), None)

    assert finished == predicted


def test_a_load_holds_back_requests_for_loaded_groups() -> None:
    requests = make_requests(200, 1.0, seed=0)
    embed = next(r for r in requests if r.group == "embed")
    mini = next(r for r in requests if r.group == "mini")
    worker = SimWorker(0, GpuSpec(24, 1.0), CATALOG, jitter=0.0)
    worker.submit(embed, 0.0)  # loads embed (1 s), then serves it
    while worker.next_event_at() < math.inf:
        worker.step()
    now = 10.0
    worker.submit(mini, now)  # loads mini: 2 s from disk
    worker.submit(embed, now)  # embed is loaded, but waits for the load to end
    assert worker.loading is not None and len(worker.waiters) == 1

    ends = {}
    while worker.next_event_at() < math.inf:
        for done in worker.step():
            ends[done.request.group] = done.at

    mini_load = CATALOG.group("mini").load_time_s  # type: ignore[union-attr]
    assert ends["embed"] == pytest.approx(now + mini_load + 0.05)
    assert worker.gpu.switches == 2


class Slowest:
    """A trivially bad policy: always the worker with the largest id (the slow card below)."""

    NAME: ClassVar[str] = "slowest"

    def choose(self, request: PlacementRequest, candidates: Sequence[WorkerSnapshot],
               rng: random.Random) -> Choice | None:
        worker = max(candidates, key=lambda w: w.worker_id)
        return Choice(worker.worker_id, Route.LEAST_LOADED, "slowest")


def test_the_oracle_is_never_worse_than_a_trivially_bad_policy() -> None:
    fleet = Fleet("hand-made", "fast and slow", (GpuSpec(24, 1.0), GpuSpec(24, 0.25)))
    requests = make_requests(300, 0.6 * ideal_capacity(fleet), seed=9)

    def latencies(variant: Variant, policy: object | None = None) -> list[float]:
        sim = Simulation(fleet, variant, requests, seed=9, warmup=0)
        if policy is not None:
            sim.policy = policy  # type: ignore[assignment]
        return sim.run().latencies

    oracle = latencies(Variant(Oracle.NAME))
    bad = latencies(Variant("round_robin"), Slowest())

    assert statistics.fmean(oracle) <= statistics.fmean(bad)
    assert max(oracle) <= max(bad)
    assert sorted(oracle)[len(oracle) // 2] <= sorted(bad)[len(bad) // 2]


def test_the_core_is_timed_for_every_policy() -> None:
    times = decision_times(calls=50, policies=("affinity", "round_robin"))

    assert set(times.per_request) == {"affinity", "round_robin"}
    assert times.workers == 4
    assert all(t.calls == 50 and 0 < t.p50_us <= t.p99_us for t in times.per_request.values())


def _tiny_cells() -> list[Cell]:
    cells = []
    for fleet in FLEETS.values():
        for variant in (Variant("round_robin"), Variant("affinity"), Variant(Oracle.NAME)):
            for load in QUICK.loads:
                result = run_job(Job("shallow", fleet.name, load, variant, seed=0, requests=60, warmup=10))
                cell = Cell("shallow", fleet.name, load, variant, ideal_capacity(fleet))
                cell.runs.append(result)
                cells.append(cell)
    return cells


def test_the_report_adds_a_router_section_and_later_replaces_only_its_block() -> None:
    timing = Timing(50.0, 90.0, 10)
    core = CoreTimes({"affinity": timing, "round_robin": timing}, Timing(1.0, 2.0, 10), 4)
    generated = render(_tiny_cells(), core, EndToEnd(0.5, 1.2, 1.0, 3.0, 10), "cmd", "env")
    planner = ("# Benchmarks\n\n## Planner\n\n<!-- bench.planner:begin -->\nplanner\n"
               "<!-- bench.planner:end -->\n\nmine\n")

    once = splice(planner, generated)
    assert once.startswith(planner.rstrip("\n"))
    assert once.index("## Router") > once.index("mine")
    for title in ("### Targets", "### Router overhead", "#### Mixed fleet", "#### Four equal"):
        assert title in once
    assert "0.70 ms" in once  # added by the router: 1.2 - 0.5

    edited = once.replace(END, END + "\n\nanalysis written by hand\n")
    again = splice(edited, render(_tiny_cells(), core, "NotImplementedError: no router", "cmd2", "env"))
    assert "analysis written by hand" in again and "Command: `cmd2`" in again and "Command: `cmd`" not in again
    assert again.count(BEGIN) == 1 and again.count("\n## Router\n") == 1
    assert "not measured: NotImplementedError: no router" in again
