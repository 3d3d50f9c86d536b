"""``gpuplane worker`` as a real process against a real nats-server, and the per-device children."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from services.worker.main import child_specs
from services.worker.settings import WorkerSettings
from shared.bus.base import Delivery
from shared.bus.nats import NatsBus, connect_once
from shared.contracts import WorkerResult, WorkerState, WorkerStatus, WorkerTask
from shared.errors import ConfigError, NoResponders
from shared.subjects import WORKER_STATUS_ALL, inventory, worker_task
from tests.builders import make_inventory, make_reference_gpus
from tests.realdeps import NatsServer
from tests.services.worker.helpers import make_task, write_catalog

REPO = Path(__file__).resolve().parents[3]


def test_one_child_per_device_with_the_parents_settings(tmp_path: Path) -> None:
    settings = WorkerSettings(
        host_name="box",
        devices="cuda:0,cuda:1",
        slots=2,
        lazy_load_model=True,
        model_groups_file=tmp_path / "groups.yml",
        metrics_port=9300,
    )
    first, second = child_specs(settings, settings.device_list(), python="/py")
    assert first.argv == ["/py", "-m", "services.cli", "worker", "--device", "cuda:0"]
    assert second.argv[-1] == "cuda:1" and (first.name, second.name) == ("worker-cuda0", "worker-cuda1")
    assert first.env["GPUPLANE_SLOTS"] == "2" and first.env["GPUPLANE_LAZY_LOAD_MODEL"] == "true"
    assert first.env["GPUPLANE_MODEL_GROUPS_FILE"] == str(tmp_path / "groups.yml")
    assert first.env["GPUPLANE_HOST_NAME"] == "box"
    assert (first.env["GPUPLANE_METRICS_PORT"], second.env["GPUPLANE_METRICS_PORT"]) == ("9300", "9301")
    assert "GPUPLANE_DEVICES" not in first.env and "GPUPLANE_DEVICE" not in first.env


def test_one_worker_id_cannot_name_several_workers() -> None:
    settings = WorkerSettings(devices="cuda:0,cuda:1", worker_id="w")
    with pytest.raises(ConfigError, match="names one worker"):
        child_specs(settings, settings.device_list())


async def until_answered(bus: NatsBus, subject: str, task: WorkerTask, timeout_s: float = 30) -> WorkerResult:
    """Until the worker has subscribed, nobody answers."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await bus.request(subject, task, WorkerResult, timeout_s=5)
        except NoResponders:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def wait_for(check: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def with_worker_process(
    nats_server: NatsServer,
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    body: Callable[[NatsBus, str, dict[str, list[WorkerStatus]]], Awaitable[None]],
) -> tuple[int, str, dict[str, list[WorkerStatus]]]:
    """Publish an inventory, run ``gpuplane worker ARGS``, run ``body``, SIGTERM it.

    Returns its exit code, its log and the statuses each worker published.
    """
    host = f"itest-{uuid.uuid4().hex[:8]}"
    bus = await connect_once(nats_server.url, service="test", timeout_s=5)
    statuses: dict[str, list[WorkerStatus]] = {}

    async def on_status(status: WorkerStatus, _: Delivery) -> None:
        if status.host == host:
            statuses.setdefault(status.worker_id, []).append(status)

    await bus.subscribe(WORKER_STATUS_ALL, WorkerStatus, on_status)
    await bus.publish(inventory(host), make_inventory(make_reference_gpus(), host=host))
    log = tmp_path / "worker.log"
    full_env = {**os.environ, "GPUPLANE_STATUS_INTERVAL_S": "0.2", "GPUPLANE_LATENCY_JITTER": "0", **env}
    for name in ("DEVICE", "DEVICES", "GPUPLANE_DEVICE", "GPUPLANE_DEVICES", "GPUPLANE_WORKER_ID"):
        if name not in env:
            full_env.pop(name, None)
    out = log.open("wb")  # noqa: ASYNC230, SIM115 - a local file, once, handed to the child
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "worker",
            "--nats-url",
            nats_server.url,
            "--host-name",
            host,
            "--model-groups-file",
            str(write_catalog(tmp_path)),
            *args,
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=out,
        )
    finally:
        out.close()
    try:
        await body(bus, host, statuses)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        await asyncio.sleep(0.2)  # the last statuses are in flight
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await bus.drain()
    return code, log.read_text(), statuses


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_worker_process_serves_a_task_and_stops_cleanly(nats_server: NatsServer, tmp_path: Path) -> None:
    async def body(bus: NatsBus, host: str, statuses: dict[str, list[WorkerStatus]]) -> None:
        result = await until_answered(bus, worker_task(host, f"{host}-cuda0"), make_task("big-chat", text="over NATS"))
        assert result.worker_id == f"{host}-cuda0" and result.device == "cuda:0" and result.loaded_group
        assert result.bodies[0]["choices"][0]["message"]["content"].endswith("You said: over NATS")
        await wait_for(lambda: any(s.request_count == 1 for s in statuses.get(f"{host}-cuda0", [])))

    code, log, statuses = await with_worker_process(
        nats_server, tmp_path, ["--device", "cuda:0", "--slots", "2"], {}, body
    )
    assert code == 0, log[-3000:]
    assert "worker stopped" in log
    [mine] = statuses.values()
    assert mine[-1].state is WorkerState.STOPPED and mine[-1].slots == 2
    assert WorkerState.DRAINING in {s.state for s in mine}


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_devices_list_runs_one_process_per_device(nats_server: NatsServer, tmp_path: Path) -> None:
    async def body(bus: NatsBus, host: str, statuses: dict[str, list[WorkerStatus]]) -> None:
        ids = (f"{host}-cuda0", f"{host}-cuda1")
        await wait_for(lambda: all(any(s.state is WorkerState.READY for s in statuses.get(i, [])) for i in ids), 60)
        result = await until_answered(bus, worker_task(host, ids[1]), make_task("small-chat"))
        assert result.device == "cuda:1"
        assert statuses[ids[0]][-1].slots == 3 and statuses[ids[1]][-1].slots == 1

    code, log, statuses = await with_worker_process(nats_server, tmp_path, [], {"DEVICES": "cuda:0,cuda:1"}, body)
    assert code == 0, log[-3000:]
    assert len(statuses) == 2
    for worker_statuses in statuses.values():
        assert worker_statuses[-1].state is WorkerState.STOPPED, log[-3000:]
