"""bench/engines' figures: each variant's summary comes out of its requests and engine counters as documented,
and the Markdown shows them. Made-up numbers only; nothing is timed here."""

from __future__ import annotations

import math

import pytest

from bench.engines.client import Result
from bench.engines.report import (
    COLUMNS,
    EngineCounters,
    counters,
    error_kind,
    failed_text,
    prefill_rate,
    ratios,
    seconds,
    share_text,
    summarize,
    table,
)

WORKERS = {"engine-0": 0, "engine-1": 1}


def answered(conversation: int, turn: int, sent: float, ttft: float, latency: float, worker: str, **kw: int) -> Result:
    result = Result(conversation, turn, sent, status=200, ttft_s=ttft, latency_s=latency, worker=worker)
    result.completion_tokens = kw.get("completion", 10)
    result.prompt_tokens = kw.get("prompt", 100)
    result.cached_tokens = kw.get("cached", 0)
    return result


def test_counters_are_the_growth_of_each_counter() -> None:
    before = {"prompt_tokens_total": 10.0, "prompt_tokens_cached_total": 0.0, "tokens_predicted_total": 2.0}
    after = {"prompt_tokens_total": 110.0, "prompt_tokens_cached_total": 300.0, "tokens_predicted_total": 52.0}
    before |= {"prompt_seconds_total": 1.0, "tokens_predicted_seconds_total": 0.5}
    after |= {"prompt_seconds_total": 2.0, "tokens_predicted_seconds_total": 1.5}
    assert counters(before, after) == EngineCounters(100.0, 300.0, 50.0, 1.0, 1.0)
    assert prefill_rate([EngineCounters(100, 0, 0, 1.0), EngineCounters(300, 0, 0, 1.0)]) == 200
    assert math.isnan(prefill_rate([EngineCounters(0, 0, 0)]))
    assert math.isnan(counters({}, {}).prompt_tokens)


def test_summary_of_a_variant() -> None:
    results = [
        answered(0, 0, 0.0, 1.0, 2.0, "engine-0", completion=10, prompt=600, cached=0),
        answered(0, 1, 3.0, 0.2, 1.0, "engine-0", completion=20, prompt=650, cached=600),
        answered(1, 0, 1.0, 0.6, 1.5, "engine-1", completion=30, prompt=600, cached=580),
        Result(1, 1, 4.0, status=503, latency_s=0.1, worker="engine-1", error="HTTP 503: busy"),
    ]
    engines = [EngineCounters(650, 600, 30), EngineCounters(20, 580, 30)]
    summary = summarize("v", results, unsent=2, workers=WORKERS, engines=engines)
    assert (summary.requests, summary.ok, summary.failed, summary.unsent) == (4, 3, 1, 2)
    assert summary.ttft_mean_s == pytest.approx(0.6)
    assert summary.ttft_first_turn_mean_s == pytest.approx(0.8)
    assert summary.ttft_later_turns_mean_s == pytest.approx(0.2)
    assert summary.ttft_p50_s == pytest.approx(0.6)
    assert summary.latency_p50_s == pytest.approx(1.5)
    # From the first request sent (0 s) to the last answer's end (3 s + 1 s, the failure ends at 4.1 s).
    assert summary.span_s == pytest.approx(4.1)
    assert summary.completion_tokens == 60
    assert summary.completion_tokens_per_s == pytest.approx(60 / 4.1)
    assert summary.requests_per_s == pytest.approx(3 / 4.1)
    assert summary.share == [2, 2]
    assert summary.cache_hit_metrics == pytest.approx(1180 / (1180 + 670))
    assert summary.cache_hit_answers == pytest.approx(1180 / 1850)
    assert summary.errors == {"HTTP 503": 1}


def test_a_variant_without_answers_has_missing_figures_not_errors() -> None:
    summary = summarize("v", [], unsent=0, workers=WORKERS, engines=[EngineCounters(0, 0, 0)] * 2)
    assert summary.requests == 0
    assert math.isnan(summary.ttft_mean_s) and math.isnan(summary.span_s) and math.isnan(summary.cache_hit_metrics)
    assert "—" in table([summary], {})


def test_error_kinds() -> None:
    assert error_kind("HTTP 429: slow down") == "HTTP 429"
    assert error_kind("cut: still open when the drain limit ran out") == "cut at the end"
    assert error_kind("ClientConnectorError: refused") == "ClientConnectorError"


def test_formatting() -> None:
    assert seconds(0.1234) == "123 ms"
    assert seconds(2.5) == "2.50 s"
    assert seconds(math.nan) == "—"
    assert share_text([1, 2]) == "33/67"
    assert share_text([1, 1, 1]) == "34/33/33"
    assert share_text([0, 0]) == "—"


def test_the_table_has_a_row_per_variant_and_one_per_variant_not_run() -> None:
    results = [answered(0, 0, 0.0, 0.5, 1.0, "engine-0")]
    summary = summarize("round robin", results, 0, WORKERS, [EngineCounters(1, 1, 1)] * 2)
    text = table([summary], {"prefix affinity on": "not available"})
    lines = text.splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert len(lines) == 4
    assert lines[2].startswith("| **round robin** | 500 ms |")
    assert "100/0" in lines[2]
    assert "not run: not available" in lines[3]
    assert all(line.count("|") == len(COLUMNS) + 1 for line in lines)


def test_failed_text_names_the_kinds() -> None:
    results = [
        answered(0, 0, 0.0, 0.5, 1.0, "engine-0"),
        Result(1, 0, 0.0, error="cut: still open when the drain limit ran out"),
    ]
    summary = summarize("v", results, 0, WORKERS, [EngineCounters(1, 1, 1)] * 2)
    assert failed_text(summary) == "1 of 2 (1 cut at the end)"


def test_ratios_of_ttft() -> None:
    fast = summarize("on", [answered(0, 0, 0.0, 0.5, 1.0, "engine-0")], 0, WORKERS, [])
    slow = summarize("off", [answered(0, 0, 0.0, 1.0, 1.0, "engine-0")], 0, WORKERS, [])
    lines = ratios({"on": fast, "off": slow}, "on", ["off", "missing"])
    assert lines == ["- on / off: TTFT mean ×0.50, TTFT p99 ×0.50, completion tokens/s ×1.00"]
    assert ratios({"off": slow}, "on", ["off"]) == []
