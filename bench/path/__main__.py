"""``python -m bench.path [--quick] [--out DIR] [--work DIR] [--paths direct,gpuplane,...] [--no-install]``.

Starts two fake upstreams and every path in front of them (installing LiteLLM and vllm-router into venvs
under the work dir, nginx and wrk with apt-get, where missing), measures them interleaved, and writes
``path.json`` and ``path.md`` into the out dir (default ``<work dir>/results``); the Markdown is also
printed. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench.common import revision, splice, write_results
from bench.path import measure, peers
from bench.path.load import wrk_binary, wrk_version
from bench.path.measure import FULL, QUICK, LoadClient, Plan, Repetition
from bench.path.peers import PEERS, Context, Installer, NotRun, Processes, Running
from bench.path.report import BASELINE, Summary, summarize, table

DEFAULT_WORK = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuplane-bench-path"


def _paths(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"paths are some of {', '.join(PEERS)}; got {text!r}")
    # Direct is every overhead's baseline, so it always runs.
    return tuple(n for n in PEERS if n in names or n == BASELINE)


def machine_facts() -> dict[str, object]:
    """What the figures depend on: cores, CPU, memory, OS, and how busy the machine was."""

    def first(path: str, key: str) -> str | None:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip('"')
        except OSError:
            return None
        return None

    memory = first("/proc/meminfo", "MemTotal")
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "memory_gib": round(int(memory.split()[0]) / 1024**2, 1) if memory else None,
        "os": first("/etc/os-release", "PRETTY_NAME"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg()[0],
    }


def _progress(started: float) -> Callable[[str], None]:
    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    return say


def _start(ctx: Context, name: str) -> Running:
    """Start one path and wait until it answers; its processes are stopped again when it does not."""
    running = PEERS[name](ctx)
    try:
        peers.wait_ready(running)
    except BaseException:
        ctx.procs.stop(running.processes)
        raise
    return running


def render(
    *,
    command: str,
    plan: Plan,
    facts: Mapping[str, object],
    took_s: float,
    setup_s: float,
    client: str,
    running: Mapping[str, Running],
    not_run: Mapping[str, str],
    summaries: Mapping[str, Summary],
    installed: list[str],
    idle: Mapping[str, float],
) -> str:
    """The Markdown report: machine and peers first, then the table, then how to read it."""
    reps = f"{plan.repetitions} repetition{'s' * (plan.repetitions > 1)}"
    lines = [
        "## Inference path: gpuplane against LiteLLM, vllm-router and nginx",
        "",
        f"`{command}`: {revision()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {reps}"
        f"{' (quick)' if plan is QUICK else ', medians shown'}; took {took_s:.0f} s "
        f"({setup_s:.0f} s installing and starting, {took_s - setup_s:.0f} s measuring).",
        "",
        f"Machine: {facts['cpus']} CPUs ({facts['cpu_model']}), {facts['memory_gib']} GiB, {facts['os']}, "
        f"Linux {facts['kernel']}, Python {facts['python']}; load average {facts['load_average_at_start']:.2f} "
        f"at start, {facts.get('load_average_at_end', math.nan):.2f} at end. Everything (client, upstreams, "
        "paths) shares these CPUs, with whatever else runs on the machine.",
        "",
        "| path | version | settings | CPU while idle |",
        "|---|---|---|---|",
    ]
    for name, path in running.items():
        spent = f"{idle[name]:.1f}% of a core" if name in idle and path.roots else "—"
        lines.append(f"| {name} | {path.version} | {path.settings} | {spent} |")
    for name, reason in not_run.items():
        lines.append(f"| {name} | — | not run: {reason.replace('|', '/')} | — |")
    lines += [
        "",
        f"Clients: throughput with {client} ({plan.load_s} s measured after {plan.load_warmup_s} s of warm-up, "
        f"closed loop); Python http.client over one keep-alive connection for serial latency "
        f"({plan.serial_requests} requests after {plan.serial_warmup}) and the streaming first chunk "
        f"({plan.stream_requests} after {plan.stream_warmup}). Two fake upstreams (one process each, raw asyncio "
        "+ httptools) answer 8 tokens; their CPU is not counted.",
        "",
        table([summaries[n] for n in running if n in summaries], not_run),
        "",
        "Overheads are the path minus direct in the same repetition (upstream delay 0); direct's serial and "
        "streaming runs go to upstream a, its throughput runs split the connections over both upstreams. "
        "Req/s counts 2xx answers. CPU-ms/request: user + system time of the path's own processes (children "
        "included, from /proc/<pid>/stat) during the 32-connection run, divided by its answers. TTFT: time to "
        "the first bytes of the first `data:` event of a streamed answer. Spread: the share of chat requests "
        "each upstream served in the throughput runs. Errors: non-2xx answers and connect/read/write/timeout "
        "errors over every measurement.",
    ]
    failures = [(s.name, f) for s in summaries.values() for f in s.failures]
    if failures:
        lines += ["", "Failed measurements:", ""] + [f"- {name}: {f}" for name, f in failures]
    lines += ["", "<details><summary>Command lines</summary>", ""]
    for name, path in running.items():
        lines += [f"{name}:", "", "```"] + path.commands + ["```", ""]
    if installed:
        lines += ["Installed in this run:", "", "```"] + installed + ["```", ""]
    lines.append("</details>")
    return "\n".join(lines) + "\n"


def _summary_json(summary: Summary) -> dict[str, object]:
    found: dict[str, object] = asdict(summary)
    found["cpu_total_ms"] = summary.cpu_total_ms
    return found


DOC_BEGIN = "<!-- bench.path:begin -->"
DOC_END = "<!-- bench.path:end -->"


def _into_doc(path: Path, markdown: str) -> None:
    """The run's tables between the markers in ``path`` (its own title becomes a subsection)."""
    body = markdown.replace("## Inference path:", "### The latest run:", 1).rstrip("\n")
    generated = f"{DOC_BEGIN}\n{body}\n{DOC_END}"
    document = path.read_text() if path.exists() else ""
    path.write_text(
        splice(document, generated, begin=DOC_BEGIN, end=DOC_END, section="## The inference path").rstrip("\n") + "\n"
    )


def _stop_on_sigterm() -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short repetition (about 2 minutes)")
    parser.add_argument("--out", type=Path, help="where path.json and path.md go (default <work dir>/results)")
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help=f"venvs, configs and logs (default {DEFAULT_WORK})"
    )
    parser.add_argument("--paths", type=_paths, default=tuple(PEERS), help=f"some of {','.join(PEERS)}")
    parser.add_argument("--no-install", action="store_true", help="run only the peers already installed")
    parser.add_argument("--doc", type=Path, help="also put the tables in this Markdown file (docs/benchmarks.md)")
    parser.add_argument(
        "--load-client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="auto: wrk when it is (or can be) installed, else the asyncio client",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    progress = _progress(started)
    plan = QUICK if args.quick else FULL
    work: Path = args.work.expanduser().resolve()
    run_dir = work / "runs" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    out: Path = (args.out or work / "results").expanduser().resolve()
    facts = machine_facts()
    installer = Installer(work, allowed=not args.no_install)
    procs = Processes()
    running: dict[str, Running] = {}
    not_run: dict[str, str] = {}
    results: dict[str, list[Repetition]] = {}
    setup_s = 0.0
    client = ""
    idle: dict[str, float] = {}
    _stop_on_sigterm()
    progress(f"work dir {work}, logs in {run_dir}")
    try:
        wrk = None
        if args.load_client != "python":
            try:
                wrk = wrk_binary() or installer.debian("wrk", "wrk")
            except NotRun as exc:
                if args.load_client == "wrk":
                    raise SystemExit(f"bench.path: {exc}") from exc
                progress(f"no wrk, the asyncio client measures throughput: {exc}")
        why = "--load-client python" if args.load_client == "python" else "wrk missing"
        client = f"{wrk_version(wrk)}, 1 thread" if wrk else f"the asyncio client ({why}), 1 process"
        upstreams = peers.start_upstreams(procs, run_dir)
        ctx = Context(procs, run_dir, installer, upstreams, progress)
        progress(f"upstreams on ports {', '.join(str(u.port) for u in upstreams)}; starting {', '.join(args.paths)}")
        with concurrent.futures.ThreadPoolExecutor(len(args.paths)) as pool:
            futures = {name: pool.submit(_start, ctx, name) for name in args.paths}
            for name, future in futures.items():
                try:
                    running[name] = future.result()
                    progress(f"{name} ready")
                except NotRun as exc:
                    not_run[name] = str(exc)
                except Exception as exc:  # noqa: BLE001 - a peer that breaks is reported, the others run
                    not_run[name] = f"{type(exc).__name__}: {exc}"
                if name in not_run:
                    progress(f"{name} not run: {not_run[name]}")
        if BASELINE not in running:
            raise SystemExit(f"bench.path: direct (the baseline) did not run: {not_run.get(BASELINE)}")
        progress(f"reading the paths' CPU while idle ({plan.idle_s:g} s)")
        idle = measure.idle_cpu(running, plan.idle_s)
        setup_s = time.perf_counter() - started
        results = measure.run(plan, running, upstreams, LoadClient(wrk), progress)
    finally:
        progress("stopping every process the benchmark started")
        procs.stop()
    facts["load_average_at_end"] = os.getloadavg()[0]
    took_s = time.perf_counter() - started
    summaries = summarize(results)
    command = "python -m bench.path" + (" --quick" if args.quick else "")
    markdown = render(
        command=command,
        plan=plan,
        facts=facts,
        took_s=took_s,
        setup_s=setup_s,
        client=client,
        running=running,
        not_run=not_run,
        summaries=summaries,
        installed=installer.done,
        idle=idle,
    )
    document = {
        "benchmark": "bench.path",
        "command": command,
        "revision": revision(),
        "quick": args.quick,
        "took_s": took_s,
        "setup_s": setup_s,
        "plan": asdict(plan),
        "machine": facts,
        "load_client": client,
        "installed": installer.done,
        "paths": {
            name: {
                "version": path.version,
                "settings": path.settings,
                "commands": path.commands,
                "processes": sorted(path.roots),
                "idle_cpu_percent_of_core": idle.get(name),
                "summary": _summary_json(summaries[name]),
                "repetitions": [measure.as_json(rep) for rep in results[name]],
            }
            for name, path in running.items()
        },
        "not_run": not_run,
    }
    as_json, as_md = write_results(out, "path", document, markdown)
    if args.doc is not None:
        _into_doc(args.doc, markdown)
    print(markdown)
    progress(f"wrote {as_md} and {as_json} ({took_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
