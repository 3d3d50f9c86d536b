"""An inference engine's own load figures, read from its Prometheus metrics and (llama.cpp) its slots.

Pure parsing: the backend fetches ``/metrics`` (and ``/slots``) and hands the text here. Engines say
different things in different words; what they say lands in one ``EngineSignals``:

- llama.cpp: ``llamacpp:requests_processing`` / ``llamacpp:requests_deferred``, the prompt-token
  counters (cached and not), ``llamacpp:predicted_tokens_seconds``; ``/slots`` gives the slot count and
  which are busy (also when ``--metrics`` is off).
- vLLM: ``vllm:num_requests_running`` / ``vllm:num_requests_waiting``, ``vllm:gpu_cache_usage_perc``
  (or ``vllm:kv_cache_usage_perc``, its newer name), the prompt-token and prefix-cache counters.
- TGI: ``tgi_queue_size`` and ``tgi_batch_current_size``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from shared.contracts import EngineSignals

LLAMACPP = "llamacpp"
VLLM = "vllm"
TGI = "tgi"
GENERIC = "openai"


def parse_prometheus(text: str) -> dict[str, float]:
    """Metric name -> value, summed over label sets (``# ...`` lines and unparsable ones skipped)."""
    values: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            after = rest.rpartition("}")[2]
        else:
            name, _, after = line.partition(" ")
        fields = after.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isnan(value) or math.isinf(value):
            continue
        values[name] = values.get(name, 0.0) + value
    return values


def engine_kind(metrics: Mapping[str, float]) -> str:
    """Which engine wrote these metrics, by their prefixes; ``openai`` when none is recognised."""
    for name in metrics:
        if name.startswith("llamacpp:"):
            return LLAMACPP
        if name.startswith("vllm:"):
            return VLLM
        if name.startswith("tgi_"):
            return TGI
    return GENERIC


def _count(value: float | None) -> int | None:
    return None if value is None else max(0, round(value))


def _fraction(value: float | None) -> float | None:
    if value is None:
        return None
    # vLLM reports a fraction; some versions and other engines a percentage.
    return min(1.0, max(0.0, value / 100.0 if value > 1.0 else value))


def parse_slots(text: str) -> tuple[int, int] | None:
    """llama.cpp's ``/slots`` as (slots, busy ones); None when it is not that list."""
    try:
        slots = json.loads(text)
    except ValueError:
        return None
    if not isinstance(slots, list) or not slots:
        return None
    busy = sum(1 for slot in slots if isinstance(slot, dict) and slot.get("is_processing"))
    return len(slots), busy


def signals_from(metrics_text: str | None, slots_text: str | None = None) -> EngineSignals:
    """What the engine's metrics (and slots) say; fields it does not report stay None."""
    metrics = parse_prometheus(metrics_text) if metrics_text else {}
    slots = parse_slots(slots_text) if slots_text else None
    kind = LLAMACPP if slots is not None else engine_kind(metrics)

    def get(*names: str) -> float | None:
        for name in names:
            if name in metrics:
                return metrics[name]
        return None

    if kind == LLAMACPP:
        running = get("llamacpp:requests_processing")
        if slots is not None:
            running = float(slots[1]) if running is None else running
        uncached = get("llamacpp:prompt_tokens_total")
        cached = get("llamacpp:prompt_tokens_cached_total")
        total = None if uncached is None else uncached + (cached or 0.0)
        return EngineSignals(
            kind=kind,
            requests_running=_count(running),
            requests_waiting=_count(get("llamacpp:requests_deferred")),
            slots_total=slots[0] if slots is not None else None,
            prompt_tokens_total=_count(total),
            prompt_tokens_cached_total=_count(cached),
            generation_tokens_per_s=get("llamacpp:predicted_tokens_seconds"),
        )
    if kind == VLLM:
        return EngineSignals(
            kind=kind,
            requests_running=_count(get("vllm:num_requests_running")),
            requests_waiting=_count(get("vllm:num_requests_waiting")),
            kv_cache_usage=_fraction(get("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")),
            prompt_tokens_total=_count(get("vllm:prompt_tokens_total")),
            prompt_tokens_cached_total=_count(get("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")),
        )
    if kind == TGI:
        return EngineSignals(
            kind=kind,
            requests_running=_count(get("tgi_batch_current_size")),
            requests_waiting=_count(get("tgi_queue_size")),
        )
    return EngineSignals(kind=kind)
