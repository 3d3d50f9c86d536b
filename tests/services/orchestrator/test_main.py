"""The orchestrator service end to end: real NATS, PostgreSQL, planner, podman and podman-compose.

A compose project of busybox services stands in for the AI stack; the test CDI spec makes podman
"inject" GPU 0 or 1, which the container's main process sees in NVIDIA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.orchestrator.main import make_start as orchestrator_start
from services.orchestrator.settings import OrchestratorSettings
from services.planner.main import make_planner
from services.planner.main import make_start as planner_start
from services.planner.settings import PlannerSettings
from shared.bus.core import work_stream
from shared.bus.nats import NatsBus, connect_once
from shared.contracts import (
    ApplyRequest,
    ApplyRun,
    AssignmentRequest,
    ConfigPutRequest,
    ConfigSaved,
    OrchestratorStatus,
    RollbackRequest,
    RunAccepted,
    RunState,
    ServiceName,
    StatusRequest,
)
from shared.errors import NoResponders, RemoteError
from shared.service import ServiceContext, serve
from shared.subjects import (
    ORCHESTRATOR_APPLY,
    ORCHESTRATOR_ROLLBACK,
    ORCHESTRATOR_STATUS,
    ORCHESTRATOR_WORK,
    ORCHESTRATOR_WORK_CONSUMER,
    PLANNER_CONFIG_PUT,
    inventory,
)
from tests.builders import make_gpu, make_inventory
from tests.podman import BUSYBOX_IMAGE, RUN_FOREVER, PodmanSandbox
from tests.realdeps import NatsServer, Postgres
from tests.services.orchestrator.fixtures import FIXTURES

pytestmark = pytest.mark.integration

SERVICES = ("ai-llm", "ai-enrichment", "ai-clip", "ai-florence", "ai-api")


def write_stack(directory: Path, name: str) -> Path:
    """The AI stack in miniature. ai-florence exits at start on GPU 1; ai-api (no GPU) depends on ai-enrichment."""

    def gpu_service(model: str, vram_gb: float, before: str = "", **needs: object) -> dict[str, object]:
        return {
            "image": BUSYBOX_IMAGE,
            "command": ["sh", "-c", f"{before}echo started on GPU $$NVIDIA_VISIBLE_DEVICES; {RUN_FOREVER}"],
            "x-gpuplane": {"model": model, "vram_gb": vram_gb, **needs},
        }

    fail_on_1 = 'if [ "$$NVIDIA_VISIBLE_DEVICES" = 1 ]; then echo "CUDA out of memory on GPU 1"; exit 3; fi; '
    compose = {
        "name": name,
        "services": {
            "ai-llm": gpu_service("Nemotron-30B", 20.0, role="llm"),
            "ai-enrichment": gpu_service("Model Zoo", 6.8, budget_adjustable=True, min_vram_gb=2.0),
            "ai-clip": gpu_service("CLIP", 1.2, role="embedding"),
            "ai-florence": gpu_service("Florence-2", 1.5, fail_on_1, role="vision"),
            "ai-api": {
                "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", RUN_FOREVER],
                "depends_on": ["ai-enrichment"],
            },
        },
    }
    path = directory / "compose.yml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(compose, sort_keys=False))
    return path


@dataclass
class Stack:
    sandbox: PodmanSandbox
    compose_file: Path
    project: str
    planner: PlannerSettings
    orchestrator: OrchestratorSettings
    client: NatsBus

    @property
    def override(self) -> Path:
        return self.orchestrator.override_path

    async def ids(self) -> dict[str, str]:
        return await asyncio.to_thread(self._ids)

    def _ids(self) -> dict[str, str]:
        out = self.sandbox.podman(
            "ps", "-a", "--no-trunc", "--filter", f"label=com.docker.compose.project={self.project}",
            "--format", '{{.ID}} {{index .Labels "com.docker.compose.service"}}',
        ).stdout
        return {service: cid for cid, service in (line.split() for line in out.splitlines() if line.strip())}

    async def gpu_seen_by(self, service: str) -> str | None:
        """What the container's main process sees in NVIDIA_VISIBLE_DEVICES (set by the CDI spec)."""
        container = (await self.ids())[service]
        return await asyncio.to_thread(self.sandbox.printenv, container, "NVIDIA_VISIBLE_DEVICES")

    async def put(self, **gpus: int) -> ConfigSaved:
        request = ConfigPutRequest(
            strategy="manual",
            assignments=tuple(AssignmentRequest(service=s, gpu_index=g) for s, g in gpus.items()),
        )
        return await self.client.request(PLANNER_CONFIG_PUT, request, ConfigSaved, timeout_s=10)

    async def apply(self) -> ApplyRun:
        reply = await self.client.request(ORCHESTRATOR_APPLY, ApplyRequest(), RunAccepted, timeout_s=30)
        return reply.run

    async def status(self) -> OrchestratorStatus:
        return await self.client.request(ORCHESTRATOR_STATUS, StatusRequest(), OrchestratorStatus, timeout_s=30)

    async def finished(self, run_id: str, timeout_s: float = 90) -> ApplyRun:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            status = await until_ready(self.status)  # an orchestrator restarting does not answer for a moment
            if status.run is not None and status.run.id == run_id and not status.run.state.active:
                return status.run
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"run {run_id} did not finish: {status.run}")
            await asyncio.sleep(0.3)


async def until_ready(call: Callable[[], Any], timeout_s: float = 30) -> Any:
    """Until a service answers (and its store is open)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await call()
        except NoResponders:
            pass
        except RemoteError as exc:
            if exc.code != "unavailable" or "not available" not in exc.remote_message:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("service not ready in time")
        await asyncio.sleep(0.2)


@pytest.fixture
def project(podman_sandbox: PodmanSandbox, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    name = f"aistack{os.getpid()}{tmp_path.name[-6:]}".replace("_", "")
    compose_file = write_stack(tmp_path / "stack", name)
    subprocess.run(
        [str(podman_sandbox.env["PATH"].split(os.pathsep)[0] + "/podman-compose"), "-f", str(compose_file), "up", "-d"],
        env=podman_sandbox.env, check=True, capture_output=True, timeout=120,
    )
    yield compose_file, name
    label = f"label=com.docker.compose.project={name}"
    ids = podman_sandbox.podman("ps", "-aq", "--filter", label, check=False).stdout.split()
    if ids:
        podman_sandbox.podman("rm", "-f", "-t", "0", *ids, check=False)
    podman_sandbox.podman("pod", "rm", "-f", "--ignore", f"pod_{name}", check=False)


@pytest.fixture
async def stack(
    podman_sandbox: PodmanSandbox,
    project: tuple[Path, str],
    own_nats_server: NatsServer,
    postgres: Postgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Stack]:
    """Planner and orchestrator in this event loop; ``indirect`` parameters override orchestrator settings."""
    compose_file, name = project
    for key in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "PATH"):
        monkeypatch.setenv(key, podman_sandbox.env[key])
    database = postgres.fresh_database()
    common: dict[str, Any] = {"nats_url": own_nats_server.url, "database_url": database, "database_retry_s": 0.2}
    planner = PlannerSettings(**common, compose_files=str(compose_file), config_dir=tmp_path / "config")
    orchestrator = OrchestratorSettings(
        **common,
        compose_files=str(compose_file),
        config_dir=tmp_path / "config",
        health_grace_s=1.5,
        health_poll_s=0.3,
        command_timeout_s=120,
        converge_on_start=False,
        **getattr(request, "param", {}),
    )
    client = await connect_once(own_nats_server.url, service="test", timeout_s=5)
    await client.publish(inventory("box-a"), make_inventory(host="box-a"))
    running: list[tuple[ServiceContext, asyncio.Task[None]]] = []
    for service, settings, start in (
        (ServiceName.PLANNER, planner, planner_start(planner, make_planner(planner))),
        (ServiceName.ORCHESTRATOR, orchestrator, orchestrator_start(orchestrator)),
    ):
        ctx = ServiceContext(service, settings)
        task = asyncio.create_task(serve(service, settings, start, install_signal_handlers=False, ctx=ctx))
        running.append((ctx, task))
    result = Stack(podman_sandbox, compose_file, name, planner, orchestrator, client)
    await until_ready(result.status)
    yield result
    for ctx, task in running:
        ctx.stopping.set()
        await asyncio.wait_for(task, 30)
    await client.drain()


async def test_apply_moves_one_service_and_touches_nothing_else_then_rolls_back_a_broken_one(stack: Stack) -> None:
    await until_ready(lambda: stack.put(**{"ai-llm": 0, "ai-enrichment": 0, "ai-clip": 1, "ai-florence": 0}))
    first = await stack.finished((await stack.apply()).id)
    assert first.state is RunState.SUCCEEDED, first
    assert {s.service for s in first.services} == {"ai-llm", "ai-enrichment", "ai-clip", "ai-florence"}
    assert await stack.gpu_seen_by("ai-clip") == "1" and await stack.gpu_seen_by("ai-enrichment") == "0"
    override = yaml.safe_load(stack.override.read_text())
    assert override["services"]["ai-clip"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": [make_gpu(1).uuid], "capabilities": ["gpu"]}
    ]

    # The move: ai-enrichment to GPU 1. Only it (and ai-api, which podman-compose recreates with it) change.
    before = await stack.ids()
    await stack.put(**{"ai-llm": 0, "ai-enrichment": 1, "ai-clip": 1, "ai-florence": 0})
    moved = await stack.finished((await stack.apply()).id)
    assert moved.state is RunState.SUCCEEDED, moved
    assert [s.service for s in moved.services] == ["ai-enrichment"]
    assert await stack.gpu_seen_by("ai-enrichment") == "1"
    after = await stack.ids()
    assert {s for s in SERVICES if after[s] != before[s]} == {"ai-enrichment", "ai-api"}
    why = {t.service: t.why for t in moved.touched}
    assert why["ai-enrichment"].startswith("asked for: GPU ") and "depends on ai-enrichment" in why["ai-api"]
    status = await stack.status()
    assert status.drift == () and status.problems == () and status.applied_revision == moved.revision

    # A broken move: ai-florence cannot start on GPU 1. The run fails, and ai-florence is back on GPU 0.
    await stack.put(**{"ai-llm": 0, "ai-enrichment": 1, "ai-clip": 1, "ai-florence": 1})
    broken = await stack.finished((await stack.apply()).id)
    assert broken.state is RunState.ROLLED_BACK, broken
    assert broken.error is not None and "ai-florence: it exited with code 3" in broken.error
    assert "CUDA out of memory on GPU 1" in broken.error
    assert await stack.gpu_seen_by("ai-florence") == "0"
    assert yaml.safe_load(stack.override.read_text())["services"]["ai-florence"]["environment"][
        "GPUPLANE_ASSIGNED_GPUS"
    ] == make_gpu(0).uuid

    # On demand: roll back the last successful apply (ai-enrichment returns to GPU 0, and so does the saved config).
    rollback = await stack.client.request(ORCHESTRATOR_ROLLBACK, RollbackRequest(), RunAccepted, timeout_s=30)
    restored = await stack.finished(rollback.run.id)
    assert restored.state is RunState.SUCCEEDED, restored
    assert await stack.gpu_seen_by("ai-enrichment") == "0"
    assert any("the saved configuration is revision 1's again" in n for n in restored.notes)


async def test_a_second_apply_while_one_runs_is_refused_with_its_id(stack: Stack) -> None:
    await until_ready(lambda: stack.put(**{"ai-llm": 0, "ai-enrichment": 1, "ai-clip": 1, "ai-florence": 0}))
    first = await stack.apply()
    with pytest.raises(RemoteError) as conflict:
        await stack.apply()
    assert conflict.value.code == "conflict" and conflict.value.context == {"run_id": first.id}
    await stack.finished(first.id)


async def test_a_container_changed_by_hand_shows_as_drift(stack: Stack) -> None:
    await until_ready(lambda: stack.put(**{"ai-llm": 0, "ai-enrichment": 1, "ai-clip": 1, "ai-florence": 0}))
    assert (await stack.finished((await stack.apply()).id)).state is RunState.SUCCEEDED
    # Someone recreates ai-clip without the override.
    clip = (await stack.ids())["ai-clip"]
    await asyncio.to_thread(stack.sandbox.podman, "rm", "-f", "-t", "0", clip)
    compose = str(Path(stack.sandbox.env["PATH"].split(os.pathsep)[0]) / "podman-compose")
    by_hand = [compose, "-f", str(stack.compose_file), "up", "-d", "--no-deps", "ai-clip"]
    await asyncio.to_thread(
        subprocess.run, by_hand, env=stack.sandbox.env, check=True, capture_output=True, timeout=120
    )

    drift = (await stack.status()).drift

    assert [d.service for d in drift] == ["ai-clip"]
    assert drift[0].expected == make_gpu(1).uuid and drift[0].actual == "no GPU"
    assert drift[0].differences == (f"GPU none -> {make_gpu(1).uuid}",)


@pytest.mark.parametrize("stack", [{"compose_cmd": "/opt/nowhere/podman-compose"}], indirect=True)
async def test_a_missing_compose_command_is_a_clear_error_and_changes_nothing(stack: Stack) -> None:
    await until_ready(lambda: stack.put(**{"ai-llm": 0, "ai-enrichment": 1, "ai-clip": 1, "ai-florence": 0}))
    before = await stack.ids()
    with pytest.raises(RemoteError) as refused:
        await stack.apply()
    assert refused.value.code == "unavailable"
    assert "/opt/nowhere/podman-compose" in refused.value.remote_message
    status = await stack.status()
    assert status.run is not None and status.run.state is RunState.FAILED
    assert status.run.error is not None and "nothing was changed" in status.run.error
    assert any("/opt/nowhere/podman-compose" in p for p in status.problems)
    assert await stack.ids() == before and not stack.override.exists()


ODD_PODMAN = f"{sys.executable} {FIXTURES / 'odd_podman.py'}"


@pytest.mark.parametrize("stack", [{"container_cmd": ODD_PODMAN}], indirect=True)
async def test_an_engine_command_failing_unexpectedly_ends_the_run_failed_and_the_next_apply_works(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await until_ready(lambda: stack.put(**{"ai-llm": 0, "ai-enrichment": 1, "ai-clip": 1, "ai-florence": 0}))
    before = await stack.ids()
    odd = tmp_path / "odd-inspect"
    monkeypatch.setenv("GPUPLANE_TEST_ODD_INSPECT", str(odd))  # the engine's commands inherit it
    odd.touch()

    broken = await stack.finished((await stack.apply()).id)

    assert not odd.exists()  # the odd document was what the run met
    assert broken.state is RunState.FAILED, broken
    assert broken.error == "nothing was changed: ValueError: invalid literal for int() with base 10: 'many'"
    assert await stack.ids() == before and not stack.override.exists()
    done = await stack.finished((await stack.apply()).id)  # not a 409: the broken run ended
    assert done.state is RunState.SUCCEEDED, done
    assert await stack.gpu_seen_by("ai-enrichment") == "1"
    # Each work item was acknowledged once, none handed back for another try.
    js = stack.client.client.jetstream()
    for _ in range(50):
        info = await js.consumer_info(work_stream(ORCHESTRATOR_WORK).name, ORCHESTRATOR_WORK_CONSUMER)
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.1)
    assert (info.num_ack_pending, info.num_redelivered, info.num_pending) == (0, 0, 0)


async def test_orchestrator_killed_mid_run_finishes_it_on_restart(
    podman_sandbox: PodmanSandbox,
    project: tuple[Path, str],
    own_nats_server: NatsServer,
    postgres: Postgres,
    tmp_path: Path,
) -> None:
    compose_file, name = project
    database = postgres.fresh_database()
    env = {
        **podman_sandbox.env,
        "GPUPLANE_NATS_URL": own_nats_server.url,
        "GPUPLANE_DATABASE_URL": database,
        "GPUPLANE_COMPOSE_FILES": str(compose_file),
        "GPUPLANE_CONFIG_DIR": str(tmp_path / "config"),
        "GPUPLANE_HEALTH_GRACE_S": "6",
        "GPUPLANE_HEALTH_POLL_S": "0.3",
        "GPUPLANE_WORK_ACK_WAIT_S": "2",
        "GPUPLANE_CONVERGE_ON_START": "false",  # the run under test is the apply below, not a start-up one
    }

    def spawn(service: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{service}.log", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen([sys.executable, "-m", "services.cli", service], env=env, stdout=log, stderr=log)

    planner = spawn("planner")
    orchestrator = spawn("orchestrator")
    client = await connect_once(own_nats_server.url, service="test", timeout_s=5)
    try:
        await client.publish(inventory("box-a"), make_inventory(host="box-a"))
        stack = Stack(podman_sandbox, compose_file, name, PlannerSettings(), OrchestratorSettings(), client)
        await until_ready(lambda: stack.put(**{"ai-llm": 0, "ai-enrichment": 1, "ai-clip": 1, "ai-florence": 0}))
        await until_ready(stack.status)
        run = await stack.apply()
        # Kill it while it watches a recreated container through the 6 s grace period.
        deadline = asyncio.get_running_loop().time() + 60
        while not any(s.container_after for s in ((await stack.status()).run or run).services):
            assert asyncio.get_running_loop().time() < deadline, "no service was recreated"
            await asyncio.sleep(0.2)
        orchestrator.send_signal(signal.SIGKILL)
        orchestrator.wait(10)
        cut = (await _status_from_store(database)).run
        assert cut is not None and cut.state is RunState.RUNNING

        orchestrator = spawn("orchestrator")
        done = await stack.finished(run.id, timeout_s=120)

        assert done.state is RunState.SUCCEEDED, done
        assert any("restarted during this run; finishing it" in n for n in done.notes)
        assert await stack.gpu_seen_by("ai-enrichment") == "1" and await stack.gpu_seen_by("ai-clip") == "1"
    finally:
        await client.drain()
        for process in (planner, orchestrator):
            process.terminate()
            process.wait(20)


async def _status_from_store(database: str) -> OrchestratorStatus:
    """The run as PostgreSQL holds it (the orchestrator that would answer is dead)."""
    from services.orchestrator.store import RunStore
    from shared.database import make_engine

    engine = make_engine(database)
    try:
        latest = await asyncio.to_thread(RunStore(engine).latest)
    finally:
        engine.dispose()
    return OrchestratorStatus(run=latest.run if latest else None, compose="")
