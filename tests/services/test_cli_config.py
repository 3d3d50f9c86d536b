"""`gpuplane config`, `audit`, `completion` and the other console twins.

The pure parts (drafts, tables, status lines, polling, completion) are table-driven over builders; the HTTP
client runs against a small real HTTP server; the commands run end to end against one real `gpuplane up`
(marked integration).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.api.schemas import ApplyStatusOut, GpuConfigOut, PlanPreviewOut
from services.cli import build_parser, main
from services.cli_config import (
    ApiError,
    Draft,
    api_call,
    budget_cell,
    check_service,
    completion_script,
    device_list,
    draft_changes,
    draft_from_config,
    error_detail,
    format_audit,
    format_config,
    format_preview,
    gpu_cell,
    gpu_names,
    load_draft,
    relative_time,
    request_for,
    stage,
    status_line,
    transitions,
    wait_for_run,
    with_gpu_names,
    write_draft,
)
from services.stack.embedded import free_port
from shared.contracts import (
    ApplyRun,
    AssignmentDiff,
    AssignmentRequest,
    AuditAction,
    AuditRecord,
    Drift,
    GpuPlanLoad,
    RunKind,
    RunState,
    ServiceAssignment,
    ServiceProgress,
    ServiceState,
)
from shared.errors import ConfigError
from shared.names import InvalidName

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

# --------------------------------------------------------------------------- builders


def make_assignment(
    service: str = "ai-llm",
    gpus: tuple[int, ...] = (0,),
    *,
    pinned: bool = False,
    estimate_gb: float = 21.7,
    budget_gb: float | None = None,
    override_gb: float | None = None,
    enabled: bool = True,
    host: str | None = "box",
) -> ServiceAssignment:
    return ServiceAssignment(
        service=service,
        model=f"{service}-model",
        host=host,
        gpu_indices=gpus,
        vram_estimate_gb=estimate_gb,
        vram_budget_gb=budget_gb,
        vram_budget_override=override_gb,
        pinned=pinned,
        placed_by="manual" if pinned else "vram_based",
        enabled=enabled,
    )


def make_config(*assignments: ServiceAssignment, strategy: str = "vram_based", revision: int = 3) -> GpuConfigOut:
    return GpuConfigOut(
        strategy=strategy,
        saved=revision > 0,
        saved_at=T0 if revision else None,
        revision=revision,
        assignments=list(assignments or (make_assignment(),)),
        warnings=[],
        strategies=[],
    )


def make_run(
    *services: tuple[str, ServiceState],
    state: RunState = RunState.RUNNING,
    run_id: str = "r1",
    error: str | None = None,
) -> ApplyRun:
    return ApplyRun(
        id=run_id,
        kind=RunKind.APPLY,
        trigger="api",
        state=state,
        revision=4,
        created_at=T0,
        error=error,
        services=tuple(
            ServiceProgress(
                service=name, state=st, change="moved",
                devices_before=("nvidia.com/gpu=0",), devices_after=("nvidia.com/gpu=1",),
            )
            for name, st in services
        ),
    )


def make_status(
    run: ApplyRun | None = None, *, problems: tuple[str, ...] = (), drift: tuple[Drift, ...] = ()
) -> ApplyStatusOut:
    return ApplyStatusOut(
        run=run, applied_revision=4 if run else None, drift=list(drift), compose="podman-compose -p ai",
        problems=list(problems),
    )


def make_record(record_id: int, at: datetime, action: AuditAction = AuditAction.CONFIG_SAVE) -> AuditRecord:
    return AuditRecord(
        id=record_id, at=at, action=action, actor="admin", actor_kind="admin", address="127.0.0.1",
        target={"revision": str(record_id)},
    )


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("estimate", "budget", "expected"),
    [
        (21.7, None, "-"),
        (6.8, 2.3, "2.3 GB adjusted"),
        (1.0, 2.0, "2.0 GB"),
        (4.0, 4.0, "4.0 GB"),
    ],
)
def test_the_budget_says_adjusted_only_below_the_estimate(estimate: float, budget: float | None, expected: str) -> None:
    assert budget_cell(make_assignment(estimate_gb=estimate, budget_gb=budget)) == expected


@pytest.mark.parametrize(
    ("assignment", "multi_host", "expected"),
    [
        (make_assignment(gpus=(0,)), False, "0"),
        (make_assignment(gpus=(1,), pinned=True), False, "1 (pinned)"),
        (make_assignment(gpus=(0, 1), pinned=True), True, "box:0,1 (pinned)"),
        (make_assignment(gpus=()), False, "none"),
        (make_assignment(gpus=(0,), enabled=False), False, "disabled"),
    ],
)
def test_the_gpu_column(assignment: ServiceAssignment, multi_host: bool, expected: str) -> None:
    assert gpu_cell(assignment, multi_host) == expected


def test_show_prints_strategy_revision_table_and_the_drafts_changes() -> None:
    config = make_config(
        make_assignment("ai-llm", (0,), pinned=True),
        make_assignment("ai-zoo", (1,), estimate_gb=6.8, budget_gb=2.3),
    )
    config = config.model_copy(update={"warnings": ["ai-zoo budget lowered"]})
    draft = stage(draft_from_config(config), "ai-zoo", gpus=[0])
    text = format_config(config, draft)
    assert text.splitlines()[0] == "strategy vram_based   revision 3   saved 2026-01-02T03:04:05+00:00"
    assert "21.7 GB" in text and "0 (pinned)" in text and "2.3 GB adjusted" in text
    assert "  - ai-zoo budget lowered" in text
    assert "A local draft exists" in text and "ai-zoo: auto → GPU 0" in text
    assert "local draft" not in format_config(config)


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        (make_assignment(pinned=False), None),
        (make_assignment(gpus=(2,), pinned=True), AssignmentRequest(service="ai-llm", gpu_index=2, host="box")),
        (
            make_assignment(gpus=(0, 1), pinned=True),
            AssignmentRequest(service="ai-llm", gpu_indices=(0, 1), host="box"),
        ),
        (make_assignment(override_gb=8.0), AssignmentRequest(service="ai-llm", vram_budget_override=8.0)),
        (make_assignment(enabled=False), AssignmentRequest(service="ai-llm", enabled=False)),
    ],
)
def test_a_draft_keeps_only_what_the_user_chose(
    assignment: ServiceAssignment, expected: AssignmentRequest | None
) -> None:
    assert request_for(assignment) == expected


BASE = Draft(strategy="vram_based", assignments=[AssignmentRequest(service="ai-llm", gpu_index=0)], base_revision=3)


@pytest.mark.parametrize(
    ("service", "changes", "expected"),
    [
        ("ai-zoo", {"gpus": [1]}, [("ai-llm", 0, None), ("ai-zoo", 1, None)]),
        ("ai-llm", {"gpus": [1]}, [("ai-llm", 1, None)]),
        ("ai-llm", {"auto": True}, []),
        ("ai-llm", {"budget_gb": 9.5}, [("ai-llm", 0, 9.5)]),
        ("ai-llm", {"auto": True, "budget_gb": 9.5}, [("ai-llm", None, 9.5)]),
        ("ai-zoo", {"budget_gb": 0}, [("ai-llm", 0, None)]),
        ("ai-zoo", {"gpus": [0, 1]}, [("ai-llm", 0, None), ("ai-zoo", (0, 1), None)]),
    ],
)
def test_stage(service: str, changes: dict[str, Any], expected: list[tuple[str, object, float | None]]) -> None:
    staged = stage(BASE, service, **changes)
    got = [(a.service, a.gpu_indices or a.gpu_index, a.vram_budget_override) for a in staged.assignments]
    assert got == expected
    assert staged.base_revision == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "nothing to stage"),
        ({"gpus": [1], "auto": True}, "not both"),
        ({"gpus": [-1]}, "ai-llm: gpu_index"),
        ({"budget_gb": 5000}, "vram_budget_override"),
    ],
)
def test_stage_refuses_bad_changes_naming_them(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        stage(BASE, "ai-llm", **changes)


def test_stage_changes_the_strategy_and_disables() -> None:
    staged = stage(BASE, "ai-llm", enabled=False, strategy="manual")
    assert staged.strategy == "manual"
    assert staged.assignments == [AssignmentRequest(service="ai-llm", gpu_index=0, enabled=False)]
    assert staged.body() == {
        "strategy": "manual", "assignments": [{"service": "ai-llm", "gpu_index": 0, "enabled": False}]
    }


def test_draft_changes_against_the_saved_configuration() -> None:
    config = make_config(make_assignment("ai-llm", (0,), pinned=True), make_assignment("ai-clip", (1,)), revision=3)
    draft = Draft(
        strategy="manual",
        assignments=[AssignmentRequest(service="ai-clip", gpu_index=0), AssignmentRequest(service="ai-llm", gpu_index=0,
                                                                                          host="box")],
        base_revision=2,
    )
    assert draft_changes(draft, config) == [
        "strategy: vram_based → manual",
        "(the draft started from revision 2; revision 3 is saved now)",
        "ai-clip: auto → GPU 0",
    ]
    assert draft_changes(draft_from_config(config), config) == []


def test_check_service_names_the_valid_ones() -> None:
    config = make_config(make_assignment("ai-llm"), make_assignment("ai-clip"))
    assert check_service("ai-clip", config) == "ai-clip"
    with pytest.raises(ConfigError, match="the catalog has: ai-llm, ai-clip"):
        check_service("ai-nope", config)
    with pytest.raises(InvalidName, match="not a valid name"):
        check_service("../x", config)


def test_a_damaged_draft_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "cli-draft.json"
    assert load_draft(path) is None
    write_draft(path, BASE)
    assert load_draft(path) == BASE
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=str(path)):
        load_draft(path)


def test_the_preview_is_a_diff_with_per_gpu_load() -> None:
    preview = PlanPreviewOut(
        strategy="balanced",
        assignments=[],
        warnings=["GPU 0 is full"],
        gpus=[GpuPlanLoad(host="box", index=0, name="RTX 4090", capacity_gb=24, planned_gb=25.5, services=("ai-llm",),
                          overcommitted=True)],
        changes=[
            AssignmentDiff(service="ai-llm", change="moved", before="box GPU 0", after="box GPU 1"),
            AssignmentDiff(service="ai-zoo", change="budget", before="box GPU 1", after="box GPU 1, budget 3 GB"),
            AssignmentDiff(service="ai-clip", change="unchanged", before="box GPU 1", after="box GPU 1"),
        ],
        feasible=False,
    )
    lines = format_preview(preview, draft=True).splitlines()
    assert "does NOT fit" in lines[0] and "nothing is saved" in lines[0]
    assert "  ~ ai-llm               moved     box GPU 0 → box GPU 1" in lines
    assert any(line.startswith("  ~ ai-zoo") and "budget" in line for line in lines)
    assert "    unchanged: ai-clip" in lines
    assert any("25.5 / 24.0 GB" in line and "OVERCOMMITTED" in line for line in lines)
    assert "  - GPU 0 is full" in lines


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"detail": "nothing to roll back"}, "nothing to roll back"),
        (
            {"detail": [{"loc": ["body", "assignments", 0, "gpu_index"], "msg": "too big"},
                        {"loc": ["query", "limit"], "msg": "too small"}]},
            "body.assignments.0.gpu_index: too big; query.limit: too small",
        ),
        ({"detail": "a run is in progress", "run_id": "abc"}, "a run is in progress (run abc)"),
        ({"detail": "run abc is in progress", "run_id": "abc"}, "run abc is in progress"),
        ("<html>", "fallback"),
        (None, "fallback"),
    ],
)
def test_error_detail(body: object, expected: str) -> None:
    assert error_detail(body, "fallback") == expected


@pytest.mark.parametrize(("status", "code"), [(404, 2), (409, 2), (422, 2), (500, 1), (503, 1), (None, 1)])
def test_client_errors_exit_2_and_server_errors_1(status: int | None, code: int) -> None:
    assert ApiError("x", status).exit_code == code


@pytest.mark.parametrize(
    ("ago", "expected"),
    [
        (timedelta(seconds=0), "0 s ago"),
        (timedelta(seconds=12), "12 s ago"),
        (timedelta(minutes=5, seconds=3), "5 min ago"),
        (timedelta(hours=3), "3 h ago"),
        (timedelta(days=2, hours=1), "2 d ago"),
        (timedelta(seconds=-4), "0 s ago"),
    ],
)
def test_relative_time(ago: timedelta, expected: str) -> None:
    assert relative_time(T0 - ago, T0) == expected


def test_audit_lists_newest_first_with_relative_and_iso_times() -> None:
    records = [make_record(1, T0 - timedelta(minutes=5)), make_record(2, T0 - timedelta(seconds=12))]
    lines = format_audit(records, T0).splitlines()
    assert lines[1].strip().startswith("12 s ago  2026-01-02T03:03:53+00:00") and "revision=2" in lines[1]
    assert lines[2].strip().startswith("5 min ago") and "config_save" in lines[2]
    assert format_audit([], T0) == "No audit records."


@pytest.mark.parametrize(
    ("devices", "expected"),
    [((), "no GPU"), (("nvidia.com/gpu=0",), "GPU 0"), (("nvidia.com/gpu=0", "nvidia.com/gpu=1"), "GPU 0,1")],
)
def test_device_list(devices: tuple[str, ...], expected: str) -> None:
    assert device_list(devices) == expected


def test_transitions_print_each_state_change_once() -> None:
    first = make_run(("ai-llm", ServiceState.PENDING), ("ai-clip", ServiceState.PENDING))
    assert len(transitions(None, first)) == 2
    assert transitions(first, first) == []
    second = make_run(("ai-llm", ServiceState.RECREATING), ("ai-clip", ServiceState.PENDING))
    [line] = transitions(first, second)
    assert line.split() == ["ai-llm", "recreating", "GPU", "0", "→", "GPU", "1"]
    other = make_run(("ai-llm", ServiceState.RECREATING), run_id="r2")
    assert len(transitions(second, other)) == 1


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (make_status(make_run(state=RunState.RUNNING)), "run r1 in progress (apply, running)"),
        (make_status(None, problems=("no compose project",)), "apply is not set up: no compose project"),
        (
            make_status(make_run(state=RunState.SUCCEEDED), drift=(Drift(service="ai-llm", container="c",
                                                                        expected="GPU 0", actual="GPU 1"),)),
            "drift found: ai-llm runs GPU 1, expected GPU 0",
        ),
        (make_status(make_run(state=RunState.SUCCEEDED)), "All services running (revision 4)"),
        (make_status(make_run(state=RunState.ROLLED_BACK, error="ai-llm unhealthy")), "last run r1 rolled_back: "
         "ai-llm unhealthy"),
        (make_status(None), "nothing applied yet: `gpuplane config apply` applies the saved configuration"),
    ],
)
def test_status_line(status: ApplyStatusOut, expected: str) -> None:
    assert status_line(status) == expected


class ScriptedStatus:
    """The statuses a gateway answers in turn (the last one again when they run out), on a fake clock."""

    def __init__(self, *statuses: ApplyStatusOut) -> None:
        self.statuses = list(statuses)
        self.now = 0.0

    def fetch(self) -> ApplyStatusOut:
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("final", "code", "last_line"),
    [
        (RunState.SUCCEEDED, 0, "All services running (revision 4)"),
        (RunState.ROLLED_BACK, 1, "run r1 rolled_back: boom"),
        (RunState.FAILED, 1, "run r1 failed: boom"),
    ],
)
def test_wait_follows_a_run_to_its_end(final: RunState, code: int, last_line: str) -> None:
    script = ScriptedStatus(
        make_status(make_run(("ai-llm", ServiceState.PENDING), state=RunState.SUCCEEDED, run_id="old")),
        make_status(make_run(("ai-llm", ServiceState.PENDING))),
        make_status(make_run(("ai-llm", ServiceState.RECREATING))),
        make_status(make_run(("ai-llm", ServiceState.RECREATING))),
        make_status(make_run(("ai-llm", ServiceState.HEALTHY), state=final, error=None if code == 0 else "boom")),
    )
    lines: list[str] = []
    got = wait_for_run("r1", script.fetch, timeout_s=60, emit=lines.append, sleep=script.sleep,
                       clock=lambda: script.now)
    assert got == code
    assert [line.split()[:2] for line in lines[:-1]] == [["ai-llm", "pending"], ["ai-llm", "recreating"],
                                                         ["ai-llm", "healthy"]]
    assert lines[-1] == last_line
    assert script.now == pytest.approx(2.0)  # five looks, 0.5 s apart


def test_wait_gives_up_after_its_timeout() -> None:
    script = ScriptedStatus(make_status(make_run(("ai-llm", ServiceState.RECREATING))))
    lines: list[str] = []
    assert wait_for_run("r1", script.fetch, timeout_s=2, emit=lines.append, sleep=script.sleep,
                        clock=lambda: script.now) == 1
    assert "still going after 2 s" in lines[-1]


# --------------------------------------------------------------------------- the command line


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == "gpuplane 0.1.0"


def test_every_option_says_what_it_does() -> None:
    import argparse

    def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, f"{path} {name}")
            elif action.option_strings and not action.help:
                yield f"{path} {action.option_strings[0]}"

    assert list(walk(build_parser(), "gpuplane")) == []


def test_completion_lists_commands_subcommands_options_and_choices() -> None:
    script = completion_script(build_parser(), "bash")
    assert "config" in script and "complete -F _gpuplane gpuplane" in script
    assert completion_script(build_parser(), "zsh").startswith("#compdef gpuplane\n")
    if shutil.which("bash") is None:
        pytest.skip("no bash to run the script in")

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        program = f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _gpuplane; echo "${{COMPREPLY[*]}}"'
        return subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True).stdout.split()

    assert {"config", "completion"} <= set(complete("gpuplane", "co"))
    assert set(complete("gpuplane", "config", "s")) == {"show", "set", "save", "status"}
    assert complete("gpuplane", "config", "set", "ai-llm", "--g") == ["--gpu"]
    assert "config_save" in complete("gpuplane", "audit", "--action", "")


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GPUPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GPUPLANE_API_TOKEN", "t" * 32)
    return tmp_path


def test_save_without_a_draft_or_strategy_is_a_usage_error(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "save"]) == 2
    assert "no draft to save" in capsys.readouterr().err


def test_an_unreachable_gateway_exits_1_naming_it(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["config", "show", "--api-url", url, "--timeout-s", "2"]) == 1
    assert f"the gateway at {url}" in capsys.readouterr().err


class Recorder(BaseHTTPRequestHandler):
    """Answers every request from ``ANSWERS[path]`` and keeps what it was sent."""

    answers: dict[str, tuple[int, str, bytes]] = {}
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, dict(self.headers), body))
        missing = (404, "application/json", b'{"detail": "Not Found"}')
        status, kind, out = self.answers.get(self.path.split("?")[0], missing)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def gateway(cli_env: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    Recorder.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_api_call_sends_raw_bytes_and_reads_text(gateway: str) -> None:
    import argparse

    Recorder.answers = {
        "/api/system/backup": (200, "application/yaml", b"version: 1\n"),
        "/api/system/backup/restore": (200, "application/json", b'{"dry_run": true}'),
        "/bad": (422, "application/json", b'{"detail": [{"loc": ["body", "x"], "msg": "wrong"}]}'),
        "/down": (503, "application/json", b'{"detail": "planner not ready"}'),
    }
    args = argparse.Namespace(api_url=gateway, timeout_s=5.0)
    assert api_call("GET", "/api/system/backup", args) == "version: 1\n"
    got = api_call("POST", "/api/system/backup/restore?dry_run=true", args, content=b"version: 1\n",
                   content_type="application/yaml")
    assert got == {"dry_run": True}
    method, path, headers, body = Recorder.seen[-1]
    assert (method, path, body) == ("POST", "/api/system/backup/restore?dry_run=true", b"version: 1\n")
    assert headers["Content-Type"] == "application/yaml" and headers["Authorization"] == "Bearer " + "t" * 32
    with pytest.raises(ApiError, match="POST /bad: 422: body.x: wrong") as bad:
        api_call("POST", "/bad", args, {"x": 1})
    assert bad.value.exit_code == 2
    with pytest.raises(ApiError, match="planner not ready") as down:
        api_call("GET", "/down", args)
    assert down.value.exit_code == 1


def test_import_dry_run_prints_the_diff(gateway: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answer = {"dry_run": True, "version": 1, "strategy": "manual", "warnings": ["w1"], "notes": [], "revision": None,
              "changes": [{"service": "ai-llm", "change": "moved", "before": "GPU 0", "after": "GPU 1"}]}
    Recorder.answers = {"/api/system/backup/restore": (200, "application/json", json.dumps(answer).encode())}
    backup = tmp_path / "backup.yml"
    backup.write_text("version: 1\n")
    assert main(["config", "import", str(backup), "--dry-run", "--api-url", gateway]) == 0
    out = capsys.readouterr().out
    assert "nothing was changed" in out and "  ~ ai-llm" in out and "  - w1" in out
    assert Recorder.seen[-1][1] == "/api/system/backup/restore?dry_run=true"


# --------------------------------------------------------------------------- against a real `gpuplane up`


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.services.stack.test_up import launch

    s = launch(tmp_path_factory.mktemp("stack"), free_port(), free_port())
    try:
        yield s
    finally:
        s.stop(30)


def stack_env(stack: Any) -> dict[str, str]:
    env = {**os.environ, "GPUPLANE_DATA_DIR": str(stack.data_dir), "GPUPLANE_HTTP_PORT": str(stack.http_port),
           "GPUPLANE_NATS_URL": stack.nats_url}
    env.pop("GPUPLANE_API_TOKEN", None)
    return env


def gpuplane(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command as a user would, against the stack (its token found in the data dir)."""
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=stack_env(stack), cwd=REPO,
                          capture_output=True, text=True, timeout=90)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_show_prints_the_saved_configuration(stack: Any) -> None:
    result = gpuplane(stack, "config", "show")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("strategy ") and "revision" in result.stdout and " GB" in result.stdout
    services = [a["service"] for a in stack.http.get("/api/system/gpu-config").json()["assignments"]]
    assert services and all(s in result.stdout for s in services)


@pytest.mark.integration
def test_set_preview_save_round_trip(stack: Any) -> None:
    service = stack.http.get("/api/system/gpu-config").json()["assignments"][0]["service"]
    unknown = gpuplane(stack, "config", "set", "no-such-service", "--gpu", "0")
    assert unknown.returncode == 2 and service in unknown.stderr

    staged = gpuplane(stack, "config", "set", service, "--gpu", "0", "--strategy", "manual")
    assert staged.returncode == 0, staged.stderr
    assert "Preview of the local draft (strategy manual)" in staged.stdout
    assert (stack.data_dir / "cli-draft.json").exists()
    shown = gpuplane(stack, "config", "show")
    assert "A local draft exists" in shown.stdout and "strategy: " in shown.stdout
    preview = gpuplane(stack, "config", "preview", "--json")
    assert preview.returncode == 0, preview.stderr
    assert json.loads(preview.stdout)["strategy"] == "manual"

    saved = gpuplane(stack, "config", "save")
    assert saved.returncode == 0, saved.stderr
    assert "saved revision" in saved.stdout
    assert not (stack.data_dir / "cli-draft.json").exists()
    config = stack.http.get("/api/system/gpu-config").json()
    assert config["strategy"] == "manual"
    mine = next(a for a in config["assignments"] if a["service"] == service)
    assert mine["gpu_indices"] == [0] and mine["pinned"] is True


@pytest.mark.integration
def test_apply_without_a_compose_project_says_it_is_not_set_up(stack: Any) -> None:
    applied = gpuplane(stack, "config", "apply", "--wait", "--timeout-s", "30")
    assert applied.returncode in (1, 2)
    assert "apply is not set up" in applied.stderr and "GPUPLANE_COMPOSE_FILES" in applied.stderr
    status = gpuplane(stack, "config", "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("apply is not set up")


@pytest.mark.integration
def test_audit_lists_the_save(stack: Any) -> None:
    result = gpuplane(stack, "audit", "--action", "config_save")
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[1]
    assert " ago  " in row and "config_save" in row and "admin" in row and "revision=" in row


@pytest.mark.integration
def test_export_then_import_dry_run_changes_nothing(stack: Any, tmp_path: Path) -> None:
    if stack.http.get("/api/system/backup").status_code == 404:
        pytest.skip("GET /api/system/backup answers 404: the backup endpoints are not in this gateway yet")
    # A saved configuration to compare with (before the first save every service is "added").
    assert stack.http.get("/api/system/gpu-config").json()["saved"] or gpuplane(
        stack, "config", "save", "--strategy", "vram_based"
    ).returncode == 0
    backup = tmp_path / "backup.yml"
    exported = gpuplane(stack, "config", "export", "--output", str(backup))
    assert exported.returncode == 0, exported.stderr
    restored = gpuplane(stack, "config", "import", str(backup), "--dry-run")
    assert restored.returncode == 0, restored.stderr
    assert "nothing was changed" in restored.stdout
    assert "no changes from the saved configuration" in restored.stdout


@pytest.mark.integration
def test_gpus_json_lists_the_inventories(stack: Any) -> None:
    result = gpuplane(stack, "gpus", "--json")
    assert result.returncode == 0, result.stderr
    inventories = json.loads(result.stdout)
    assert inventories and all("host" in inv and "gpus" in inv for inv in inventories)


@pytest.mark.integration
def test_watch_stops_with_130_on_ctrl_c_and_quietly_when_its_reader_leaves(stack: Any) -> None:
    command = [sys.executable, "-m", "services.cli", "watch"]
    proc = subprocess.Popen(command, env=stack_env(stack), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith(b"watching ")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 130

    # `gpuplane watch | head -1`: the reader closes the pipe after one line.
    head = subprocess.Popen(command, env=stack_env(stack), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert head.stdout is not None and head.stderr is not None
    assert head.stdout.readline().startswith(b"[gpuplane.")
    head.stdout.close()
    assert head.wait(30) == 0
    assert b"Traceback" not in head.stderr.read()


@pytest.mark.parametrize(
    ("gpus", "devices", "expected"),
    [
        ([{"host": "vm", "index": 0, "uuid": "GPU-a"}], ("GPU-a",), "GPU 0"),
        ([{"host": "vm", "index": 0, "uuid": "GPU-a"}], ("nvidia.com/gpu=GPU-a",), "GPU 0"),
        (
            [{"host": "a", "index": 0, "uuid": "GPU-a"}, {"host": "b", "index": 0, "uuid": "GPU-b"}],
            ("GPU-b",),
            "GPU b:0",
        ),
        ([], ("GPU-gone",), "GPU GPU-gone"),  # a GPU the inventory no longer has keeps its id
    ],
)
def test_uuids_are_shown_as_the_gpus_people_know(
    gpus: list[dict[str, object]], devices: tuple[str, ...], expected: str
) -> None:
    assert device_list(devices, gpu_names(gpus)) == expected


def test_uuids_in_a_runs_texts_are_named_too() -> None:
    names = gpu_names([{"host": "vm", "index": 1, "uuid": "GPU-a4000b1c-3d5e"}])
    assert with_gpu_names("GPU none -> GPU-a4000b1c-3d5e; VRAM_BUDGET_GB unset -> 3.5", names) == (
        "GPU none -> 1; VRAM_BUDGET_GB unset -> 3.5"
    )
    assert with_gpu_names("GPU GPU-ffffffff-0000 gone", names) == "GPU GPU-ffffffff-0000 gone"
