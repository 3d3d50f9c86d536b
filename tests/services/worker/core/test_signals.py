"""An engine's own load figures from its metrics and slots (texts as llama.cpp, vLLM and TGI write them)."""

from __future__ import annotations

import json

import pytest

from services.worker.core.signals import parse_prometheus, parse_slots, signals_from
from shared.contracts import EngineSignals

LLAMACPP_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 420
llamacpp:prompt_tokens_cached_total 380
llamacpp:predicted_tokens_seconds 66.654
llamacpp:requests_processing 1
llamacpp:requests_deferred 2
"""
SLOTS = json.dumps([{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}])
VLLM_METRICS = """\
vllm:num_requests_running{model_name="m"} 3.0
vllm:num_requests_waiting{model_name="m"} 4.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.75
vllm:prompt_tokens_total{model_name="m"} 1000.0
vllm:prefix_cache_hits_total{model_name="m"} 600.0
"""


def test_prometheus_text_sums_label_sets_and_skips_what_is_not_a_sample() -> None:
    text = 'a{x="1 2"} 3\na{x="2"} 4\n# comment\nb 5 1700000000\nbroken value\nc NaN\n'
    assert parse_prometheus(text) == {"a": 7.0, "b": 5.0}


@pytest.mark.parametrize(
    ("metrics", "slots", "expected"),
    [
        (
            LLAMACPP_METRICS,
            SLOTS,
            EngineSignals(
                kind="llamacpp",
                requests_running=1,
                requests_waiting=2,
                slots_total=2,
                prompt_tokens_total=800,
                prompt_tokens_cached_total=380,
                generation_tokens_per_s=66.654,
            ),
        ),
        (None, SLOTS, EngineSignals(kind="llamacpp", requests_running=1, slots_total=2)),
        (
            VLLM_METRICS,
            None,
            EngineSignals(
                kind="vllm",
                requests_running=3,
                requests_waiting=4,
                kv_cache_usage=0.75,
                prompt_tokens_total=1000,
                prompt_tokens_cached_total=600,
            ),
        ),
        ("vllm:kv_cache_usage_perc 42\n", None, EngineSignals(kind="vllm", kv_cache_usage=0.42)),
        (
            "tgi_queue_size 5\ntgi_batch_current_size 2\n",
            None,
            EngineSignals(kind="tgi", requests_running=2, requests_waiting=5),
        ),
        ("process_cpu_seconds_total 3\n", None, EngineSignals(kind="openai")),
    ],
    ids=["llamacpp", "llamacpp-slots-only", "vllm", "vllm-percent", "tgi", "unknown"],
)
def test_each_engines_words_land_in_one_shape(metrics: str | None, slots: str | None, expected: EngineSignals) -> None:
    assert signals_from(metrics, slots) == expected


@pytest.mark.parametrize(("text", "parsed"), [(SLOTS, (2, 1)), ("[]", None), ("{}", None), ("not json", None)])
def test_slots(text: str, parsed: tuple[int, int] | None) -> None:
    assert parse_slots(text) == parsed
