"""From the repetitions' figures to the summary (medians over repetitions) and the Markdown table."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.common import markdown_table
from bench.path.measure import Loaded, Repetition
from bench.path.stats import median

BASELINE = "direct"

COLUMNS = (
    "path",
    "serial p50 overhead",
    "serial p99 overhead",
    "req/s @32 (0 ms), % of direct",
    "req/s @128 (20 ms), % of direct",
    "CPU-ms/request @32 (by process)",
    "streaming TTFT overhead p50",
    "spread a/b",
    "errors",
)


@dataclass(frozen=True)
class Summary:
    """One path's figures, each the median over the repetitions; overheads are path minus direct,
    taken within each repetition first."""

    name: str
    repetitions: int
    serial_p50_ms: float
    serial_p99_ms: float
    serial_p50_overhead_ms: float
    serial_p99_overhead_ms: float
    stream_p50_ms: float
    stream_p50_overhead_ms: float
    rps_low: float
    rps_high: float
    rps_low_of_direct: float
    """Fraction of direct's, 0..1 (NaN when direct has none)."""
    rps_high_of_direct: float
    cpu_ms: dict[str, float]
    """Per process, at the low-load run."""
    cpu_ms_high: dict[str, float]
    split: list[int]
    """Requests each upstream served in all throughput runs together."""
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def cpu_total_ms(self) -> float:
        return sum(self.cpu_ms.values()) if self.cpu_ms else math.nan


Pick = Callable[[Repetition], float | None]


def _serial_p50(rep: Repetition) -> float | None:
    return rep.serial.p50_ms if rep.serial else None


def _serial_p99(rep: Repetition) -> float | None:
    return rep.serial.p99_ms if rep.serial else None


def _stream_p50(rep: Repetition) -> float | None:
    return rep.stream.p50_ms if rep.stream else None


def _rps_low(rep: Repetition) -> float | None:
    return rep.low.result.rps if rep.low else None


def _rps_high(rep: Repetition) -> float | None:
    return rep.high.result.rps if rep.high else None


def _values(reps: Sequence[Repetition], pick: Pick) -> list[float]:
    return [value for value in map(pick, reps) if value is not None]


def _paired(reps: Sequence[Repetition], base: Sequence[Repetition], pick: Pick) -> list[tuple[float, float]]:
    """(path, direct) pairs of one figure, from the repetitions where both were measured."""
    pairs = []
    for rep, ref in zip(reps, base, strict=False):
        mine, theirs = pick(rep), pick(ref)
        if mine is not None and theirs is not None:
            pairs.append((mine, theirs))
    return pairs


def _overhead(reps: Sequence[Repetition], base: Sequence[Repetition], pick: Pick) -> float:
    """Median over repetitions of path minus direct."""
    return median([mine - theirs for mine, theirs in _paired(reps, base, pick)])


def _of_direct(reps: Sequence[Repetition], base: Sequence[Repetition], pick: Pick) -> float:
    """Median over repetitions of path / direct."""
    return median([mine / theirs for mine, theirs in _paired(reps, base, pick) if theirs > 0])


def _cpu(loads: Sequence[Loaded | None]) -> dict[str, float]:
    names = [name for x in loads if x is not None for name in x.cpu_ms_per_request]
    return {
        name: median([x.cpu_ms_per_request[name] for x in loads if x is not None and name in x.cpu_ms_per_request])
        for name in dict.fromkeys(names)
    }


def _errors(reps: Sequence[Repetition]) -> dict[str, int]:
    kinds: dict[str, int] = {}

    def add(kind: str, count: int) -> None:
        if count:
            kinds[kind] = kinds.get(kind, 0) + count

    for rep in reps:
        for timings in (rep.serial, rep.stream):
            if timings is not None:
                add("serial/stream", timings.errors)
        for x in (rep.low, rep.high):
            if x is not None:
                add("non-2xx", x.result.status_errors)
                for kind, count in x.result.socket_errors.items():
                    add(kind, count)
    return kinds


def _split(reps: Sequence[Repetition]) -> list[int]:
    split: list[int] = []
    for x in (x for rep in reps for x in (rep.low, rep.high) if x is not None):
        split = [a + b for a, b in zip(split, x.split, strict=True)] if split else list(x.split)
    return split


def summarize(results: Mapping[str, Sequence[Repetition]]) -> dict[str, Summary]:
    """Every path's summary; overheads against ``direct`` of the same repetition."""
    base = results.get(BASELINE, [])
    summaries: dict[str, Summary] = {}
    for name, reps in results.items():
        kinds = _errors(reps)
        summaries[name] = Summary(
            name=name,
            repetitions=len(reps),
            serial_p50_ms=median(_values(reps, _serial_p50)),
            serial_p99_ms=median(_values(reps, _serial_p99)),
            serial_p50_overhead_ms=_overhead(reps, base, _serial_p50),
            serial_p99_overhead_ms=_overhead(reps, base, _serial_p99),
            stream_p50_ms=median(_values(reps, _stream_p50)),
            stream_p50_overhead_ms=_overhead(reps, base, _stream_p50),
            rps_low=median(_values(reps, _rps_low)),
            rps_high=median(_values(reps, _rps_high)),
            rps_low_of_direct=_of_direct(reps, base, _rps_low),
            rps_high_of_direct=_of_direct(reps, base, _rps_high),
            cpu_ms=_cpu([r.low for r in reps]),
            cpu_ms_high=_cpu([r.high for r in reps]),
            split=_split(reps),
            errors=sum(kinds.values()),
            error_kinds=kinds,
            failures=[f for r in reps for f in r.failures],
        )
    return summaries


# ---------------------------------------------------------------------------------------------- formatting


def ms(value: float, *, signed: bool = False) -> str:
    """Milliseconds to 2 decimals (1 from 100 up); a dash for a missing figure."""
    if math.isnan(value):
        return "—"
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    if abs(value) >= 100:
        text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return f"{text} ms"


def rate(value: float, of_direct: float | None) -> str:
    if math.isnan(value):
        return "—"
    text = f"{value:,.0f}"
    if of_direct is not None and not math.isnan(of_direct):
        text += f" ({100 * of_direct:.0f}%)"
    return text


def cpu_text(per_process: Mapping[str, float]) -> str:
    """``2.80 (api 1.20, router 0.80, ...)``; the total alone for a path of one process."""
    if not per_process:
        return "—"
    total = sum(per_process.values())
    if len(per_process) == 1:
        return f"{total:.2f}"
    parts = ", ".join(f"{name} {value:.2f}" for name, value in per_process.items())
    return f"{total:.2f} ({parts})"


def spread_text(split: Sequence[int]) -> str:
    """Each upstream's share of the requests in percent, e.g. ``51/49``."""
    total = sum(split)
    if total <= 0:
        return "—"
    shares = [100 * n / total for n in split]
    rounded = [round(s) for s in shares]
    # Keep the shown shares adding up to 100: the largest takes the rounding's difference.
    rounded[max(range(len(shares)), key=lambda i: shares[i])] += 100 - sum(rounded)
    return "/".join(str(s) for s in rounded)


def errors_text(summary: Summary) -> str:
    if not summary.errors and not summary.failures:
        return "0"
    parts = [f"{count} {kind}" for kind, count in summary.error_kinds.items()]
    if summary.failures:
        parts.append(f"{len(summary.failures)} failed measurement{'s' * (len(summary.failures) > 1)}")
    return f"{summary.errors} ({', '.join(parts)})"


def row(summary: Summary) -> list[str]:
    if summary.name == BASELINE:
        return [
            f"**{summary.name}**",
            f"(p50 {ms(summary.serial_p50_ms)})",
            f"(p99 {ms(summary.serial_p99_ms)})",
            rate(summary.rps_low, None),
            rate(summary.rps_high, None),
            cpu_text(summary.cpu_ms),
            f"(p50 {ms(summary.stream_p50_ms)})",
            spread_text(summary.split),
            errors_text(summary),
        ]
    return [
        f"**{summary.name}**",
        ms(summary.serial_p50_overhead_ms, signed=True),
        ms(summary.serial_p99_overhead_ms, signed=True),
        rate(summary.rps_low, summary.rps_low_of_direct),
        rate(summary.rps_high, summary.rps_high_of_direct),
        cpu_text(summary.cpu_ms),
        ms(summary.stream_p50_overhead_ms, signed=True),
        spread_text(summary.split),
        errors_text(summary),
    ]


def table(summaries: Sequence[Summary], not_run: Mapping[str, str]) -> str:
    """The Markdown table: one row per path measured, then one per path that could not run."""
    return markdown_table(COLUMNS, [row(summary) for summary in summaries], not_run)
