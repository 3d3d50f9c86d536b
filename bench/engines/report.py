"""From a variant's requests and its engines' counters to its figures, and from the figures to Markdown."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.common import markdown_table
from bench.engines.client import Result
from bench.path.report import spread_text as share_text
from bench.path.stats import percentile

COLUMNS = (
    "variant",
    "TTFT mean",
    "TTFT p99",
    "TTFT mean, turns 2+",
    "latency p50",
    "latency p99",
    "completion tokens/s",
    "requests/s",
    "failed",
    "engine share",
    "prompt-cache hits",
)


@dataclass(frozen=True)
class EngineCounters:
    """What one engine's /metrics counted over the run (differences of the counters)."""

    prompt_tokens: float
    """Prompt tokens it processed (llama.cpp's ``prompt_tokens_total`` leaves out those taken from its cache)."""
    cached_tokens: float
    """Prompt tokens taken from its prompt cache (``prompt_tokens_cached_total``)."""
    predicted_tokens: float
    prompt_seconds: float = 0.0
    """Time it spent processing prompts (``prompt_seconds_total``)."""
    predicted_seconds: float = 0.0
    """Time it spent generating (``tokens_predicted_seconds_total``)."""


def counters(before: Mapping[str, float], after: Mapping[str, float]) -> EngineCounters:
    def grew(name: str) -> float:
        return after.get(name, math.nan) - before.get(name, 0.0)

    return EngineCounters(
        grew("prompt_tokens_total"),
        grew("prompt_tokens_cached_total"),
        grew("tokens_predicted_total"),
        grew("prompt_seconds_total"),
        grew("tokens_predicted_seconds_total"),
    )


def prefill_rate(engines: Sequence[EngineCounters]) -> float:
    """Prompt tokens processed a second while processing prompts, all engines together (a slow machine shows)."""
    seconds = sum(e.prompt_seconds for e in engines)
    return sum(e.prompt_tokens for e in engines) / seconds if seconds > 0 else math.nan


@dataclass(frozen=True)
class Summary:
    name: str
    requests: int
    """Requests sent (every turn whose request went out)."""
    ok: int
    failed: int
    """Sent but not answered in full (an error status or event, a broken connection, cut at the end)."""
    unsent: int
    """Turns never sent: an earlier turn of theirs failed, or the run ended before them."""
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    ttft_first_turn_mean_s: float
    ttft_later_turns_mean_s: float
    latency_p50_s: float
    latency_p99_s: float
    span_s: float
    """From the first request sent to the last answer's end."""
    completion_tokens: int
    completion_tokens_per_s: float
    requests_per_s: float
    share: list[int]
    """Requests each engine served (by the gateway's X-Gpuplane-Worker header), engine 0 first."""
    cache_hit_metrics: float
    """Prompt tokens from the engines' caches / all prompt tokens, from their /metrics."""
    cache_hit_answers: float
    """The same from the answers' ``usage.prompt_tokens_details.cached_tokens``."""
    engines: list[EngineCounters] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def error_kind(error: str) -> str:
    """A short name for an error, to count them by kind."""
    if error.startswith("HTTP "):
        return error.split(":", 1)[0]
    if error.startswith("cut"):
        return "cut at the end"
    return error.split(":", 1)[0][:40]


def add_counters(one: EngineCounters, two: EngineCounters) -> EngineCounters:
    return EngineCounters(
        one.prompt_tokens + two.prompt_tokens,
        one.cached_tokens + two.cached_tokens,
        one.predicted_tokens + two.predicted_tokens,
        one.prompt_seconds + two.prompt_seconds,
        one.predicted_seconds + two.predicted_seconds,
    )


def span_of(results: Sequence[Result]) -> float:
    """From the first request sent to the last answer's end (times from one run's start); NaN when none ended."""
    ends = [r.done_s for r in results if r.done_s is not None]
    return (max(ends) - min(r.sent_s for r in results)) if results and ends else math.nan


def summarize(
    name: str,
    results: Sequence[Result],
    unsent: int,
    workers: Mapping[str, int],
    engines: Sequence[EngineCounters],
    span_s: float | None = None,
) -> Summary:
    """``span_s``: the time the requests took in all (several runs pooled: the sum of their spans); default
    the span of ``results`` as one run."""
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    latency = [r.latency_s for r in ok if r.latency_s is not None]
    span = span_of(results) if span_s is None else span_s
    completion = sum(r.completion_tokens for r in ok)
    share = [0] * len(engines)
    for r in results:
        index = workers.get(r.worker or "")
        if index is not None and index < len(share):
            share[index] += 1
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            kind = error_kind(r.error or "no answer")
            errors[kind] = errors.get(kind, 0) + 1
    processed = sum(e.prompt_tokens for e in engines)
    cached = sum(e.cached_tokens for e in engines)
    prompt_answers = sum(r.prompt_tokens for r in ok)
    return Summary(
        name=name,
        requests=len(results),
        ok=len(ok),
        failed=len(results) - len(ok),
        unsent=unsent,
        ttft_mean_s=mean(ttft),
        ttft_p50_s=percentile(ttft, 50),
        ttft_p99_s=percentile(ttft, 99),
        ttft_first_turn_mean_s=mean([r.ttft_s for r in ok if r.turn == 0 and r.ttft_s is not None]),
        ttft_later_turns_mean_s=mean([r.ttft_s for r in ok if r.turn > 0 and r.ttft_s is not None]),
        latency_p50_s=percentile(latency, 50),
        latency_p99_s=percentile(latency, 99),
        span_s=span,
        completion_tokens=completion,
        completion_tokens_per_s=completion / span if span and span > 0 else math.nan,
        requests_per_s=len(ok) / span if span and span > 0 else math.nan,
        share=share,
        cache_hit_metrics=cached / (cached + processed) if cached + processed > 0 else math.nan,
        cache_hit_answers=sum(r.cached_tokens for r in ok) / prompt_answers if prompt_answers else math.nan,
        engines=list(engines),
        errors=errors,
    )


# ---------------------------------------------------------------------------------------------- formatting


def seconds(value: float) -> str:
    """Seconds as ms below one second, else to two decimals; a dash when missing."""
    if math.isnan(value):
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def number(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def percent(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.0f}%"


def failed_text(summary: Summary) -> str:
    if not summary.failed:
        return f"0 of {summary.requests}"
    kinds = ", ".join(f"{count} {kind}" for kind, count in summary.errors.items())
    return f"{summary.failed} of {summary.requests} ({kinds})"


def row(summary: Summary) -> list[str]:
    return [
        f"**{summary.name}**",
        seconds(summary.ttft_mean_s),
        seconds(summary.ttft_p99_s),
        seconds(summary.ttft_later_turns_mean_s),
        seconds(summary.latency_p50_s),
        seconds(summary.latency_p99_s),
        number(summary.completion_tokens_per_s),
        number(summary.requests_per_s, 2),
        failed_text(summary),
        share_text(summary.share),
        percent(summary.cache_hit_metrics),
    ]


def table(summaries: Sequence[Summary], not_run: Mapping[str, str]) -> str:
    """The Markdown table: one row per variant measured, then one per variant that could not run."""
    return markdown_table(COLUMNS, [row(summary) for summary in summaries], not_run)


def ratio(mine: float, theirs: float) -> float:
    if math.isnan(mine) or math.isnan(theirs) or theirs <= 0:
        return math.nan
    return mine / theirs


def ratios(summaries: Mapping[str, Summary], subject: str, others: Sequence[str]) -> list[str]:
    """Lines: ``subject``'s TTFT mean and p99 as a fraction of each other variant's."""
    if subject not in summaries:
        return []
    mine = summaries[subject]
    lines = []
    for other in others:
        if other not in summaries:
            continue
        theirs = summaries[other]
        lines.append(
            f"- {subject} / {other}: TTFT mean ×{number(ratio(mine.ttft_mean_s, theirs.ttft_mean_s), 2)}, "
            f"TTFT p99 ×{number(ratio(mine.ttft_p99_s, theirs.ttft_p99_s), 2)}, "
            f"completion tokens/s ×{number(ratio(mine.completion_tokens_per_s, theirs.completion_tokens_per_s), 2)}"
        )
    return lines
