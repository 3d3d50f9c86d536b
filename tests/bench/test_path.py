"""bench/path: the fake upstream answers as OpenAI does, the clients and /proc readings count right, and the
report's figures and table come out of the repetitions as documented.

Correctness only: timings are the benchmark's business, never asserted here. The only network is a fake
upstream on localhost, served from a thread of this process.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.path import cpu
from bench.path.load import (
    LoadResult,
    Target,
    Timings,
    combine,
    first_chunk,
    lua_string,
    parse_wrk,
    request_body,
    serial,
    shares,
    wrk_script,
)
from bench.path.measure import Loaded, Repetition, rotated
from bench.path.peers import litellm_config, nginx_config
from bench.path.report import COLUMNS, Summary, cpu_text, errors_text, ms, spread_text, summarize, table
from bench.path.stats import median, percentile
from bench.path.upstream import (
    ANSWER_TOKENS,
    MODEL,
    UpstreamState,
    _Connection,
    chunk_frame,
    completion,
    http_response,
    route,
    sse_event,
    stream_chunks,
)

# ---------------------------------------------------------------------------------------------- the fake upstream


def test_a_completion_has_the_openai_shape_and_eight_tokens_of_usage() -> None:
    answer = completion("m", 7, prompt=5, created=100)

    assert answer["object"] == "chat.completion"
    assert answer["model"] == "m"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "".join(ANSWER_TOKENS)}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}
    assert len(ANSWER_TOKENS) == 8


def test_stream_chunks_spell_the_same_answer_and_end_with_finish_reason_and_usage() -> None:
    chunks = stream_chunks("m", 1, prompt=2, created=100)

    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-bench-1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "".join(ANSWER_TOKENS)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert 3 <= len(chunks) <= 8


def test_framing() -> None:
    assert sse_event("[DONE]") == b"data: [DONE]\n\n"
    assert sse_event({"a": 1}) == b'data: {"a":1}\n\n'
    assert chunk_frame(b"hello") == b"5\r\nhello\r\n"
    assert chunk_frame(b"") == b"0\r\n\r\n"
    whole = http_response(200, b"{}", keep_alive=False)
    assert whole.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 2\r\n" in whole and b"connection: close\r\n" in whole
    assert whole.endswith(b"\r\n\r\n{}")


def _state(delay_s: float = 0.0) -> UpstreamState:
    return UpstreamState(MODEL, delay_s, stream_gap_s=0.001)


def test_route_streams_chunks_after_the_delay_and_closes_with_done() -> None:
    body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "a b c"}]})

    reply = route(_state(0.02), "POST", "/v1/chat/completions", body.encode(), keep_alive=True)

    assert reply.chat and reply.streamed
    waits = [wait for wait, _ in reply.steps]
    assert waits[0] == 0.02 and all(w == 0.001 for w in waits[1:-1]) and waits[-1] == 0
    first = reply.steps[0][1]
    assert b"transfer-encoding: chunked" in first and b"text/event-stream" in first
    assert reply.steps[-2][1] == chunk_frame(sse_event("[DONE]"))
    assert reply.steps[-1][1] == chunk_frame(b"")


def test_route_answers_models_health_control_and_errors() -> None:
    state = _state()

    def answer(method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, object]]:
        data = b"".join(step for _, step in route(state, method, path, body, keep_alive=True).steps)
        head, _, payload = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)

    status, models = answer("GET", "/v1/models")
    assert status == 200 and models["data"] == [
        {"id": MODEL, "object": "model", "created": state.created, "owned_by": "bench"}
    ]
    assert answer("GET", "/health")[0] == 200
    assert answer("POST", "/_bench/delay", b'{"ms": 20}') == (200, {"delay_ms": 20.0})
    assert state.delay_s == pytest.approx(0.02)
    assert answer("POST", "/_bench/delay", b"{}")[0] == 400
    assert answer("POST", "/v1/chat/completions", b"not json")[0] == 400
    assert answer("GET", "/v1/chat/completions")[0] == 405
    assert answer("GET", "/nowhere")[0] == 404


@pytest.fixture
def upstream() -> Iterator[tuple[int, UpstreamState]]:
    """The fake upstream on a free localhost port, its loop in a thread of this process."""
    state = UpstreamState(MODEL, 0.0, stream_gap_s=0.0)
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(lambda: _Connection(state), "127.0.0.1", 0))
    port = int(server.sockets[0].getsockname()[1])
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port, state
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


def test_the_clients_get_answers_over_one_kept_alive_connection(upstream: tuple[int, UpstreamState]) -> None:
    port, state = upstream
    target = Target("127.0.0.1", port)

    plain = serial(target, requests=20, warmup=3)
    streamed = first_chunk(target, requests=10, warmup=2)

    assert plain.errors == 0 and len(plain.samples_ms) == 20
    assert streamed.errors == 0 and len(streamed.samples_ms) == 10
    assert state.counters.served == 35
    assert state.counters.streamed == 12


def test_the_clients_count_error_answers(upstream: tuple[int, UpstreamState]) -> None:
    port, _ = upstream

    found = serial(Target("127.0.0.1", port, prefix="/nowhere"), requests=5, warmup=0)

    assert found.errors == 5 and found.samples_ms == []


# ---------------------------------------------------------------------------------------------- /proc


def _stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime ...
    return f"{pid} ({comm}) S {ppid} 1 1 0 -1 4194560 10 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0 5 0\n"


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    stat = cpu.parse_stat(_stat_line(42, "python (x) y", 7, 150, 30, 4, 1))

    assert stat == cpu.ProcStat(pid=42, comm="python (x) y", ppid=7, utime=150, stime=30, cutime=4, cstime=1)
    assert stat.ticks == 185


def test_parse_stat_refuses_what_is_not_a_stat_line() -> None:
    with pytest.raises(ValueError):
        cpu.parse_stat("hello")


def _fake_proc(root: Path, lines: dict[int, str]) -> Path:
    for pid, line in lines.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "stat").write_text(line)
    (root / "self").mkdir()
    return root


def test_a_tree_counts_every_descendant_and_what_reaped_children_left(tmp_path: Path) -> None:
    proc = _fake_proc(
        tmp_path,
        {
            10: _stat_line(10, "nginx", 1, 100, 50, cutime=7, cstime=3),
            11: _stat_line(11, "nginx", 10, 200, 20),
            12: _stat_line(12, "nginx", 10, 300, 30),
            13: _stat_line(13, "helper", 12, 5, 5),
            20: _stat_line(20, "other", 1, 999, 999),
        },
    )

    stats = cpu.all_stats(proc)

    assert sorted(cpu.descendants(10, stats)) == [10, 11, 12, 13]
    assert cpu.tree_ticks(10, stats) == 160 + 220 + 330 + 10
    assert cpu.sample({"nginx": [10], "other": [20], "gone": [99]}, proc) == {
        "nginx": 720,
        "other": 1998,
        "gone": 0,
    }


def test_cpu_per_request() -> None:
    per_request = cpu.per_request_ms({"api": 100}, {"api": 100 + cpu.CLOCK_TICKS_PER_S, "router": 0}, 500)

    assert per_request == {"api": pytest.approx(2.0), "router": 0.0}
    assert cpu.per_request_ms({}, {"api": 5}, 0) == {"api": 0.0}


# ---------------------------------------------------------------------------------------------- percentiles


def test_percentiles_interpolate_between_ranks_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]

    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_median_leaves_missing_figures_out() -> None:
    assert median([3.0, math.nan, 1.0, 2.0]) == 2.0
    assert math.isnan(median([math.nan]))


# ---------------------------------------------------------------------------------------------- load clients


def test_lua_strings_escape_quotes_backslashes_and_newlines() -> None:
    assert lua_string('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


def test_wrk_script_posts_the_body_with_the_headers_and_reports_json() -> None:
    script = wrk_script(request_body(), {"Authorization": "Bearer k", "Content-Type": "application/json"})

    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Authorization"] = "Bearer k"' in script
    assert '\\"model\\":\\"bench-chat\\"' in script
    assert "done = function(summary, latency, requests)" in script


def test_parse_wrk_reads_the_done_line() -> None:
    output = (
        "Running 4s test @ http://127.0.0.1:1/v1/chat/completions\n"
        'WRK_JSON {"requests":1000,"duration_us":4000000,"status":3,"connect":0,"read":2,"write":0,'
        '"timeout":1,"p50_us":1500,"p99_us":9000}\n'
    )

    found = parse_wrk(output)

    assert found.requests == 1000 and found.ok == 997 and found.errors == 6
    assert found.rps == pytest.approx(997 / 4)
    assert (found.p50_ms, found.p99_ms) == (1.5, 9.0)
    with pytest.raises(ValueError):
        parse_wrk("wrk: connection refused")


def test_connections_split_evenly_and_side_by_side_runs_combine() -> None:
    assert shares(32, 2) == [16, 16]
    assert shares(5, 2) == [3, 2]
    a = LoadResult(100, 1, {"read": 1, "timeout": 0}, 4.0, 1.0, 5.0, "wrk")
    b = LoadResult(50, 0, {"read": 0, "timeout": 2}, 4.1, 2.0, 3.0, "wrk")

    both = combine([a, b])

    assert (both.requests, both.status_errors, both.duration_s) == (150, 1, 4.1)
    assert both.socket_errors == {"read": 1, "timeout": 2}
    assert (both.p50_ms, both.p99_ms) == (2.0, 5.0)
    assert combine([a]) is a


def test_rotation_moves_every_path_through_every_position() -> None:
    names = ["direct", "gpuplane", "nginx"]

    assert [rotated(names, r)[0] for r in range(4)] == ["direct", "gpuplane", "nginx", "direct"]
    assert rotated([], 3) == []


def test_peer_configs_name_both_upstreams() -> None:
    config = nginx_config(Path("/tmp/x"), 8000, [9001, 9002])
    assert "server 127.0.0.1:9001;" in config and "server 127.0.0.1:9002;" in config
    assert "keepalive 256;" in config and "proxy_buffering off;" in config

    class FakeUpstream:
        def __init__(self, port: int) -> None:
            self.url = f"http://127.0.0.1:{port}/v1"

    litellm = litellm_config([FakeUpstream(9001), FakeUpstream(9002)], "simple-shuffle")  # type: ignore[list-item]
    assert litellm.count(f"model_name: {MODEL}") == 2
    assert "routing_strategy: simple-shuffle" in litellm and "master_key:" in litellm


# ---------------------------------------------------------------------------------------------- report


def _rep(
    p50: float,
    p99: float,
    ttft: float,
    rps_low: float,
    rps_high: float,
    cpu_ms: dict[str, float],
    split: list[int],
    status_errors: int = 0,
) -> Repetition:
    def loaded(rps: float) -> Loaded:
        result = LoadResult(int(rps * 10) + status_errors, status_errors, {"timeout": 0}, 10.0, 1.0, 2.0, "wrk")
        return Loaded(result, cpu_ms, split)

    return Repetition(
        serial=Timings([p50] * 98 + [p99] * 2, errors=0),
        stream=Timings([ttft] * 10, errors=0),
        low=loaded(rps_low),
        high=loaded(rps_high),
    )


def _results() -> dict[str, list[Repetition]]:
    return {
        "direct": [
            _rep(0.2, 0.5, 0.4, 10000, 6000, {}, [5, 5]),
            _rep(0.3, 0.6, 0.5, 12000, 6000, {}, [5, 5]),
            _rep(0.2, 0.5, 0.4, 11000, 6000, {}, [5, 5]),
        ],
        "gpuplane": [
            _rep(2.2, 4.5, 3.4, 500, 900, {"api": 1.0, "router": 0.5}, [50, 50]),
            _rep(2.3, 9.6, 3.5, 600, 600, {"api": 1.2, "router": 0.4}, [60, 40], status_errors=2),
            _rep(2.0, 4.5, 3.0, 550, 1200, {"api": 1.1, "router": 0.6}, [51, 49]),
        ],
    }


def test_summaries_take_medians_of_per_repetition_differences() -> None:
    found = summarize(_results())["gpuplane"]

    assert found.repetitions == 3
    assert found.serial_p50_overhead_ms == pytest.approx(2.0)  # 2.0, 2.0, 1.8
    assert found.serial_p99_overhead_ms == pytest.approx(4.0)  # 4.0, 9.0, 4.0
    assert found.stream_p50_overhead_ms == pytest.approx(3.0)  # 3.0, 3.0, 2.6
    assert found.rps_low == pytest.approx(550)
    assert found.rps_low_of_direct == pytest.approx(0.05)  # 0.05, 0.05, 0.05
    assert found.rps_high_of_direct == pytest.approx(0.15)  # 0.15, 0.10, 0.20
    assert found.cpu_ms == {"api": pytest.approx(1.1), "router": pytest.approx(0.5)}
    assert found.split == [2 * 161, 2 * 139]
    assert found.errors == 4 and found.error_kinds == {"non-2xx": 4}


def test_a_failed_measurement_leaves_its_figure_out_of_the_medians() -> None:
    results = _results()
    results["gpuplane"][1].serial = None
    results["gpuplane"][1].failures.append("serial: ConnectionRefusedError")

    found = summarize(results)["gpuplane"]

    assert found.serial_p50_overhead_ms == pytest.approx(1.9)  # 2.0 and 1.8
    assert found.failures == ["serial: ConnectionRefusedError"]
    assert errors_text(found) == "4 (4 non-2xx, 1 failed measurement)"


def test_cells() -> None:
    assert ms(1.234, signed=True) == "+1.23 ms"
    assert ms(-0.5, signed=True) == "-0.50 ms"
    assert ms(123.45) == "123.5 ms"
    assert ms(math.nan) == "—"
    assert cpu_text({"api": 1.0, "router": 0.25}) == "1.25 (api 1.00, router 0.25)"
    assert cpu_text({"nginx": 0.031}) == "0.03"
    assert cpu_text({}) == "—"
    assert spread_text([51, 49]) == "51/49"
    assert spread_text([1, 2]) == "33/67"
    assert spread_text([1, 1, 1]) == "34/33/33"
    assert spread_text([0, 0]) == "—"


def test_the_table_has_a_row_per_path_and_one_per_path_not_run() -> None:
    summaries = summarize(_results())

    text = table([summaries["direct"], summaries["gpuplane"]], {"litellm": "pip install failed | offline"})

    lines = text.splitlines()
    assert len(lines) == 5
    assert all(line.count("|") == len(COLUMNS) + 1 for line in lines)
    assert lines[2].startswith("| **direct** | (p50 0.20 ms) |")
    gpuplane = lines[3].split(" | ")
    assert gpuplane[1:4] == ["+2.00 ms", "+4.00 ms", "550 (5%)"]
    assert gpuplane[5] == "1.60 (api 1.10, router 0.50)"
    assert "not run: pip install failed / offline" in lines[4]


def test_an_empty_summary_renders_dashes() -> None:
    nan = math.nan
    empty = Summary(
        name="nginx",
        repetitions=1,
        serial_p50_ms=nan,
        serial_p99_ms=nan,
        serial_p50_overhead_ms=nan,
        serial_p99_overhead_ms=nan,
        stream_p50_ms=nan,
        stream_p50_overhead_ms=nan,
        rps_low=nan,
        rps_high=nan,
        rps_low_of_direct=nan,
        rps_high_of_direct=nan,
        cpu_ms={},
        cpu_ms_high={},
        split=[],
        errors=0,
    )

    cells = table([empty], {}).splitlines()[2].split(" | ")

    assert cells[1:8] == ["—"] * 7


def test_the_tables_go_between_the_markers_and_the_rest_of_the_doc_stays(tmp_path: Path) -> None:
    from bench.path.__main__ import DOC_BEGIN, DOC_END, _into_doc

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\n## The inference path\n\nBefore.\n\n{DOC_BEGIN}\nold\n{DOC_END}\n\nAfter.\n")
    _into_doc(doc, "## Inference path: gpuplane against its peers\n\n| a | b |\n")
    text = doc.read_text()
    assert "old" not in text and "### The latest run: gpuplane against its peers" in text
    assert text.index("Before.") < text.index(DOC_BEGIN) < text.index("| a | b |") < text.index(DOC_END)
    assert text.rstrip().endswith("After.")

    fresh = tmp_path / "empty.md"
    _into_doc(fresh, "## Inference path: x\n")
    assert "## The inference path" in fresh.read_text() and DOC_END in fresh.read_text()
