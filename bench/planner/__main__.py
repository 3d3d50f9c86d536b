"""``python -m bench.planner [--quick] [--seed N] [--cells 8x20,64x500] [--out docs/benchmarks.md]``.

Without ``--out`` the Markdown goes to stdout; with it, the generated block of the file's Planner
section is replaced (the section is added when the file has none). Progress goes to stderr.
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
from bench.planner.measure import FULL, QUICK, Config, run
from bench.planner.report import render, splice


def _cells(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(g), int(s)) for g, s in (part.lower().split("x") for part in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"cells look like 8x20,64x500 (GPUs x services); got {text!r}") from None




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.planner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small grid, short limits (under 30 s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every instance (default 0)")
    parser.add_argument("--cells", type=_cells, help="only these GPUs x services cells, e.g. 8x20,64x500")
    parser.add_argument("--out", type=Path, help="Markdown file whose Planner section to write (default: stdout)")
    args = parser.parse_args(argv)

    config: Config = QUICK if args.quick else FULL
    if args.cells:
        config = dataclasses.replace(config, cells=args.cells)
    started = time.perf_counter()
    cells = run(config, args.seed, progress=lambda label: print(f"  {label}", file=sys.stderr, flush=True))
    took = time.perf_counter() - started

    command = ".venv/bin/python -m bench.planner" + (" --quick" if args.quick else "") + f" --seed {args.seed}"
    if args.cells:
        command += " --cells " + ",".join(f"{g}x{s}" for g, s in args.cells)
    if args.out:
        command += f" --out {args.out}"
    environment = (
        f"Run: {revision()}, Python {platform.python_version()}, {os.cpu_count()} CPUs "
        f"({platform.machine()}), {took:.0f} s in all; exact solver limit {config.exact_time_limit_s:g} s "
        "per instance."
    )
    generated = render(cells, command, environment)
    publish(generated, args.out, splice, "Planner", took)
    return 0


if __name__ == "__main__":
    sys.exit(main())
