"""``python -m bench.router [--quick] [--seed N] [--fleets pair,equal] [--out docs/benchmarks.md]``.

Without ``--out`` the Markdown goes to stdout; with it, the generated block of the file's Router
section is replaced (the section is added at the end when the file has none). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

from bench.common import publish, revision
from bench.router.burst import run_burst
from bench.router.fleet import FLEETS
from bench.router.measure import FULL, QUICK, Config, run
from bench.router.overhead import EndToEnd, decision_times, end_to_end
from bench.router.report import render, splice


def _fleets(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in FLEETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"fleets are some of {', '.join(FLEETS)}; got {text!r}")
    return names




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.router", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one seed (under a minute)")
    parser.add_argument("--seed", type=int, default=0, help="first seed of the arrivals and the policies (default 0)")
    parser.add_argument("--fleets", type=_fleets, help="only these fleets, e.g. pair")
    parser.add_argument("--processes", type=int, help="simulations run in parallel (default: one per CPU)")
    parser.add_argument("--out", type=Path, help="Markdown file whose Router section to write (default: stdout)")
    args = parser.parse_args(argv)

    config: Config = QUICK if args.quick else FULL
    if args.fleets:
        config = dataclasses.replace(config, fleets=args.fleets)
    started = time.perf_counter()
    # Real-time measurements first, on an otherwise idle machine (the simulations use every CPU).
    print("  router overhead: the core", file=sys.stderr, flush=True)
    core = decision_times(config.overhead_calls)
    print("  router overhead: round trips over nats-server", file=sys.stderr, flush=True)
    e2e: EndToEnd | str
    try:
        e2e = end_to_end(config.end_to_end_samples, max(20, config.end_to_end_samples // 10))
    except Exception as exc:  # noqa: BLE001 - the figure is reported as missing, with the reason
        e2e = f"{type(exc).__name__}: {exc}"
        print(f"  end to end failed: {e2e}", file=sys.stderr, flush=True)
    simulation_started = time.perf_counter()
    cells = run(config, args.seed, progress=lambda label: print(f"  {label}", file=sys.stderr, flush=True),
                processes=args.processes)
    print("  burst", file=sys.stderr, flush=True)
    bursts = [run_burst(policy, args.seed + s)
              for policy in ("round_robin", "affinity") for s in range(config.burst_seeds)]
    simulated = time.perf_counter() - simulation_started
    took = time.perf_counter() - started

    command = ".venv/bin/python -m bench.router" + (" --quick" if args.quick else "") + f" --seed {args.seed}"
    if args.fleets:
        command += " --fleets " + ",".join(args.fleets)
    if args.out:
        command += f" --out {args.out}"
    environment = (
        f"Run: {revision()}, Python {platform.python_version()}, {os.cpu_count()} CPUs ({platform.machine()}), "
        f"{took:.0f} s in all ({simulated:.0f} s of simulation); {config.requests} measured requests after "
        f"{config.warmup} of warm-up per run, {config.seeds} seed{'s' * (config.seeds > 1)} "
        f"({', '.join(str(args.seed + s) for s in range(config.seeds))}) pooled per row."
    )
    generated = render(cells, core, e2e, command, environment, bursts=bursts)
    publish(generated, args.out, splice, "Router", took)
    return 0


if __name__ == "__main__":
    sys.exit(main())
