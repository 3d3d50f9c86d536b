"""bench/engines' command: the engine command lines, the routing settings each variant gets, the metrics parser,
the capacity estimate, the report and its place in docs/benchmarks.md. No engine is started."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.engines import __main__ as cli
from bench.engines import stack
from bench.engines.client import Result, RunLog
from bench.engines.report import EngineCounters
from bench.engines.stack import VARIANTS, Variant, engine_argv, parse_metrics
from bench.engines.workload import make_workload


def test_engine_command_pins_one_thread_to_one_core() -> None:
    argv = engine_argv(8123, 1)
    assert argv[:3] == ["taskset", "-c", "1"]
    assert argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--threads") + 1] == "1"
    assert argv[argv.index("--alias") + 1] == stack.MODEL
    assert "gpuplane_runtime.llamacpp" in argv
    assert engine_argv(8123, None)[0] != "taskset"


def test_engine_cores_go_round_the_usable_ones() -> None:
    cpus = stack.engine_cpus(3)
    assert len(cpus) == 3
    if cpus[0] is not None:
        assert set(cpus) <= set(range(1024))


def test_the_three_variants_and_their_settings() -> None:
    assert [v.name for v in VARIANTS] == ["prefix affinity on", "prefix affinity off", "round robin"]
    on, off, rr = VARIANTS
    assert on.env(True) == {"GPUPLANE_ROUTING_POLICY": "affinity", "GPUPLANE_PREFIX_AFFINITY": "true"}
    assert off.env(True) == {"GPUPLANE_ROUTING_POLICY": "affinity", "GPUPLANE_PREFIX_AFFINITY": "false"}
    assert rr.env(True)["GPUPLANE_ROUTING_POLICY"] == "round_robin"
    # Where the settings have no such field, the variable is not set at all.
    assert on.env(False) == {"GPUPLANE_ROUTING_POLICY": "affinity"}


def test_prefix_affinity_availability_is_a_yes_or_no() -> None:
    assert stack.prefix_affinity_available() in (True, False)


def test_parse_metrics() -> None:
    text = (
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        "llamacpp:prompt_tokens_total 554\n"
        "llamacpp:prompt_tokens_cached_total 508\n"
        'other{label="x"} 3\n'
        "llamacpp:broken abc\n"
        "\n"
    )
    assert parse_metrics(text) == {"prompt_tokens_total": 554.0, "prompt_tokens_cached_total": 508.0}


def test_capacity_counts_answers_done_within_the_duration() -> None:
    results = [Result(0, i, float(i), status=200, ttft_s=0.1, latency_s=0.5) for i in range(12)]
    # Done at 0.5, 1.5, ..., 11.5: ten within 10 s.
    assert cli.capacity(results, 10.0) == pytest.approx(1.0)
    assert math.isnan(cli.capacity(results[:2], 10.0))
    assert math.isnan(cli.capacity([Result(0, 0, 0.0, error="x")] * 5, 10.0))


def _round(name: str, ttft: float, number: int = 0) -> cli.Round:
    results = [
        Result(0, 0, 0.0, status=200, ttft_s=ttft, latency_s=2 * ttft, worker="engine-0"),
        Result(0, 1, 3.0, status=200, ttft_s=ttft / 2, latency_s=ttft, worker="engine-1"),
    ]
    for r in results:
        r.completion_tokens = 10
    variant = next(v for v in VARIANTS if v.name == name)
    return cli.Round(
        variant=variant,
        number=number,
        log=RunLog(results),
        engines=[EngineCounters(100, 300, 10)] * 2,
        workers={"engine-0": 0, "engine-1": 1},
        policy=variant.policy,
        commands=["gpuplane api"],
        settings="auth on",
        engine_cpus=[0, 1],
        load_average=(1.0, 2.0),
    )


def _measured(name: str, ttft: float) -> cli.Measured:
    return cli.pool([_round(name, ttft)])


def test_rounds_alternate_the_order() -> None:
    assert cli.orders(1) == [VARIANTS]
    assert cli.orders(3) == [VARIANTS, tuple(reversed(VARIANTS)), VARIANTS]


def test_pooled_rounds_add_their_requests_spans_and_counters() -> None:
    one, two = _round("round robin", 1.0, 0), _round("round robin", 3.0, 1)
    pooled = cli.pool([one, two])
    assert pooled.rounds == [one, two]
    assert pooled.summary.requests == 4
    assert pooled.summary.ttft_mean_s == pytest.approx((1.0 + 0.5 + 3.0 + 1.5) / 4)
    # Spans: 3 + 1 = 4 s, then 3 + 3 = 6 s.
    assert pooled.summary.span_s == pytest.approx(10.0)
    assert pooled.summary.completion_tokens_per_s == pytest.approx(40 / 10.0)
    assert pooled.summary.engines == [EngineCounters(200, 600, 20)] * 2
    assert pooled.summary.share == [2, 2]


def _render(**changes: object) -> str:
    workload = make_workload(0, 0.2, 30)
    measured = {v.name: _measured(v.name, t) for v, t in zip(VARIANTS, (0.5, 1.0, 2.0), strict=True)}
    facts = {
        "cpus": 2,
        "cpu_model": "Test CPU",
        "memory_gib": 8.0,
        "os": "Test OS",
        "kernel": "6.0",
        "python": "3.11",
        "load_average_at_start": 0.5,
        "load_average_at_end": 1.5,
    }
    arguments: dict[str, object] = {
        "command": "python -m bench.engines",
        "plan": cli.FULL,
        "quick": False,
        "facts": facts,
        "took_s": 700.0,
        "engines": 2,
        "engine_cpus": [0, 1],
        "calibration": cli.Calibration(80, 45.0, 1.8, 576, 0.9),
        "workload": workload,
        "measured": measured,
        "not_run": {},
        "prefix_field": True,
    }
    arguments.update(changes)
    return cli.render(**arguments)  # type: ignore[arg-type]


def test_render_shows_machine_workload_table_and_ratios() -> None:
    text = _render()
    assert text.startswith(cli.TITLE)
    assert "Machine: 2 CPUs (Test CPU)" in text
    assert "took 700 s" in text
    assert "576 tokens" in text
    assert "CPU 0, CPU 1" in text
    assert "1.80 requests/s" in text
    assert "| **prefix affinity on** | 375 ms |" in text
    assert "| **round robin** | 1.50 s |" in text
    assert "- prefix affinity on / prefix affinity off: TTFT mean ×0.50" in text
    assert "- prefix affinity on / round robin: TTFT mean ×0.25" in text
    assert "- prefix affinity off / round robin: TTFT mean ×0.50" in text
    assert "not available" not in text
    assert "| 1 | round robin | 1.50 s | 2.00 s | — | — | 1.00 → 2.00 |" in text
    assert "round 1: prefix affinity on, prefix affinity off, round robin; round 2: round robin," in text


def test_render_says_when_prefix_affinity_is_not_available() -> None:
    workload = make_workload(0, 0.2, 30)
    measured = {v.name: _measured(v.name, 1.0) for v in VARIANTS[1:]}
    text = _render(
        measured=measured, not_run={VARIANTS[0].name: "not available"}, prefix_field=False, workload=workload
    )
    assert "| **prefix affinity on** | not run: not available |" in text
    assert "Prefix affinity is not available in this tree" in text
    assert "prefix affinity on /" not in text


def test_the_doc_section_is_added_once_then_replaced_between_its_markers(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Router\n\nkept\n\n<!-- bench.path:begin -->\nother\n<!-- bench.path:end -->\n")
    cli._into_doc(doc, _render())
    first = doc.read_text()
    assert first.count("## Engines\n") == 1
    assert first.count(cli.DOC_BEGIN) == 1 and first.count(cli.DOC_END) == 1
    assert "### The latest run" in first and cli.TITLE not in first
    assert "kept" in first and "<!-- bench.path:begin -->\nother\n<!-- bench.path:end -->" in first
    assert first.index("## Engines") < first.index(cli.DOC_BEGIN)
    cli._into_doc(doc, _render(took_s=123.0))
    second = doc.read_text()
    assert second.count("## Engines\n") == 1 and second.count(cli.DOC_BEGIN) == 1
    assert "took 123 s" in second and "took 700 s" not in second


def test_variant_names_are_folder_safe() -> None:
    for variant in VARIANTS:
        assert "/" not in variant.name.replace(" ", "-")
    assert Variant("x", "p2c", False).env(True)["GPUPLANE_PREFIX_AFFINITY"] == "false"


def test_the_command_runs_every_variant_in_every_round_and_writes_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's flow with the engines replaced by canned rounds: calibration, rounds, files, doc."""
    calls: list[tuple[str, int]] = []

    def calibrate(*args: object) -> cli.Calibration:
        return cli.Calibration(40, 45.0, 1.2, 576, 0.8)

    def measure(procs: object, run_dir: object, variant: Variant, number: int, *rest: object) -> cli.Round:
        calls.append((variant.name, number))
        return _round(variant.name, 1.0 + number, number)

    monkeypatch.setattr(cli, "calibrate", calibrate)
    monkeypatch.setattr(cli, "measure", measure)
    monkeypatch.setattr(stack, "prefix_affinity_available", lambda: True)
    monkeypatch.setattr("gpuplane_runtime.llamacpp.engine_installed", lambda: True)
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    out = tmp_path / "out"
    assert cli.main(["--doc", str(doc), "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    names = [v.name for v in VARIANTS]
    assert calls == [(n, 0) for n in names] + [(n, 1) for n in reversed(names)]
    document = json.loads((out / "engines.json").read_text())
    assert set(document["variants"]) == set(names)
    assert [r["round"] for r in document["variants"]["round robin"]["rounds"]] == [1, 2]
    assert document["variants"]["round robin"]["summary"]["requests"] == 4
    assert document["calibration"]["capacity_rps"] == 1.2
    # Half of 1.2 requests/s in conversations of 4.5 turns on average.
    assert document["workload"]["rate_per_s"] == pytest.approx(0.6 / 4.5)
    assert (out / "engines.md").read_text().startswith(cli.TITLE)
    assert cli.DOC_BEGIN in doc.read_text() and "## Engines" in doc.read_text()
