"""The measurements, interleaved: in each repetition every kind of measurement goes over every path
before the next kind starts, in an order that rotates per repetition, so drift on the machine (other
processes, thermal state) falls on all paths alike."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.path import cpu
from bench.path.load import LoadResult, Target, Timings, first_chunk, run_python_load, run_wrk, serial
from bench.path.peers import Running, Upstream


@dataclass(frozen=True)
class Plan:
    repetitions: int
    serial_requests: int
    serial_warmup: int
    stream_requests: int
    stream_warmup: int
    load_s: int
    load_warmup_s: int
    idle_s: float
    """How long each path's CPU is read while nothing is sent (what it costs the others beside it)."""
    low_connections: int = 32
    high_connections: int = 128
    high_delay_ms: float = 20.0


QUICK = Plan(
    repetitions=1,
    serial_requests=200,
    serial_warmup=20,
    stream_requests=40,
    stream_warmup=5,
    load_s=4,
    load_warmup_s=1,
    idle_s=2,
)
FULL = Plan(
    repetitions=3,
    serial_requests=1000,
    serial_warmup=100,
    stream_requests=200,
    stream_warmup=20,
    load_s=10,
    load_warmup_s=2,
    idle_s=5,
)


@dataclass
class Loaded:
    """One throughput run and what it cost the path."""

    result: LoadResult
    cpu_ms_per_request: dict[str, float]
    """Per named process of the path (children included)."""
    split: list[int]
    """Chat requests each upstream served during the run."""


@dataclass
class Repetition:
    """One path's figures in one repetition; None where the measurement failed (``failures`` says why)."""

    serial: Timings | None = None
    stream: Timings | None = None
    low: Loaded | None = None
    """``Plan.low_connections`` connections, upstream delay 0."""
    high: Loaded | None = None
    """``Plan.high_connections`` connections, upstream delay ``Plan.high_delay_ms``."""
    failures: list[str] = field(default_factory=list)


class LoadClient:
    """wrk when it is installed, else the asyncio client; one thread either way."""

    def __init__(self, wrk: str | None, timeout_s: int = 10) -> None:
        self.wrk = wrk
        self.timeout_s = timeout_s

    def run(self, targets: Sequence[Target], connections: int, duration_s: int) -> LoadResult:
        if self.wrk is not None:
            return run_wrk(self.wrk, targets, connections, duration_s, timeout_s=self.timeout_s)
        return run_python_load(targets, connections, duration_s, timeout_s=self.timeout_s)


def idle_cpu(paths: Mapping[str, Running], seconds: float) -> dict[str, float]:
    """Each path's CPU while no request is sent, in percent of one core (heartbeats, health checks, timers)."""
    roots = {f"{name}/{label}": pids for name, path in paths.items() for label, pids in path.roots.items()}
    before = cpu.sample(roots)
    started = time.perf_counter()
    time.sleep(seconds)
    after = cpu.sample(roots)
    elapsed_ms = 1000 * (time.perf_counter() - started)
    found = {name: 0.0 for name in paths}
    for key, ticks in after.items():
        found[key.split("/", 1)[0]] += 100 * cpu.ticks_to_ms(ticks - before.get(key, 0)) / elapsed_ms
    return found


def rotated(names: Sequence[str], by: int) -> list[str]:
    """``names`` starting at index ``by`` (mod its length)."""
    if not names:
        return []
    by %= len(names)
    return [*names[by:], *names[:by]]


def loaded(
    client: LoadClient,
    running: Running,
    upstreams: Sequence[Upstream],
    connections: int,
    duration_s: int,
    warmup_s: int,
) -> Loaded:
    """A warm-up run, then the measured one with the path's CPU and the upstreams' counts read around it."""
    if warmup_s > 0:
        client.run(running.load_targets, connections, warmup_s)
    served_before = [u.served() for u in upstreams]
    cpu_before = cpu.sample(running.roots)
    result = client.run(running.load_targets, connections, duration_s)
    cpu_after = cpu.sample(running.roots)
    split = [u.served() - before for u, before in zip(upstreams, served_before, strict=True)]
    return Loaded(result, cpu.per_request_ms(cpu_before, cpu_after, result.requests), split)


def run(
    plan: Plan,
    paths: dict[str, Running],
    upstreams: Sequence[Upstream],
    client: LoadClient,
    progress: Callable[[str], None],
) -> dict[str, list[Repetition]]:
    """Every repetition of every measurement on every path."""
    names = list(paths)
    results: dict[str, list[Repetition]] = {name: [] for name in names}

    def each(kind: str, rep: int, measure: Callable[[Running, Repetition], None]) -> None:
        for name in rotated(names, rep):
            progress(f"repetition {rep + 1}/{plan.repetitions}: {kind}: {name}")
            entry = results[name][rep]
            try:
                measure(paths[name], entry)
            except Exception as exc:  # noqa: BLE001 - one failed measurement is reported, the rest go on
                entry.failures.append(f"{kind}: {type(exc).__name__}: {exc}"[:500])
                progress(f"  failed: {entry.failures[-1]}")

    def set_delay(ms: float) -> None:
        for upstream in upstreams:
            upstream.set_delay(ms)

    for rep in range(plan.repetitions):
        for name in names:
            results[name].append(Repetition())
        set_delay(0)

        def measure_serial(running: Running, entry: Repetition) -> None:
            entry.serial = serial(running.target, plan.serial_requests, plan.serial_warmup)

        def measure_stream(running: Running, entry: Repetition) -> None:
            entry.stream = first_chunk(running.target, plan.stream_requests, plan.stream_warmup)

        def measure_low(running: Running, entry: Repetition) -> None:
            entry.low = loaded(client, running, upstreams, plan.low_connections, plan.load_s, plan.load_warmup_s)

        def measure_high(running: Running, entry: Repetition) -> None:
            entry.high = loaded(client, running, upstreams, plan.high_connections, plan.load_s, plan.load_warmup_s)

        each("serial", rep, measure_serial)
        each("streaming first chunk", rep, measure_stream)
        each(f"{plan.low_connections} connections, 0 ms", rep, measure_low)
        set_delay(plan.high_delay_ms)
        each(f"{plan.high_connections} connections, {plan.high_delay_ms:g} ms", rep, measure_high)
        set_delay(0)
    return results


def as_json(rep: Repetition) -> dict[str, object]:
    """One repetition's raw figures (samples left out: their percentiles are kept)."""

    def timings(t: Timings | None) -> dict[str, object] | None:
        if t is None:
            return None
        return {"p50_ms": t.p50_ms, "p99_ms": t.p99_ms, "samples": len(t.samples_ms), "errors": t.errors}

    def load(x: Loaded | None) -> dict[str, object] | None:
        if x is None:
            return None
        figures = dataclasses.asdict(x.result)
        figures.update(rps=x.result.rps, ok=x.result.ok, errors=x.result.errors)
        return {"result": figures, "cpu_ms_per_request": x.cpu_ms_per_request, "split": x.split}

    return {
        "serial": timings(rep.serial),
        "stream": timings(rep.stream),
        "low": load(rep.low),
        "high": load(rep.high),
        "failures": rep.failures,
    }
