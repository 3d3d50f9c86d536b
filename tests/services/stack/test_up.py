"""`gpuplane up` end to end, as a user runs it: real nats-server, real PostgreSQL, five services.

One stack for the module (it takes seconds to start); the tests run in file order and the last
one stops it and checks that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest

from services.stack.embedded import free_port
from shared.identities import Identity, inbox_prefix
from shared.natsauth import NatsCredentials, identity_file, load_credentials
from tests.realdeps import pids_alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    data_dir: Path
    http_port: int
    nats_port: int
    log: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def token(self) -> str:
        """The admin token `up` made (and prints in the banner's login URL)."""
        return (self.data_dir / "secrets" / "admin-token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def http(self) -> httpx.Client:
        """A client of the gateway holding the admin token."""
        return httpx.Client(base_url=self.api, headers=self.auth, timeout=10)

    def creds(self, identity: Identity) -> NatsCredentials:
        return load_credentials(identity_file(self.data_dir, identity))

    async def nats(self, identity: Identity = Identity.OBSERVER) -> nats.aio.client.Client:
        """A plain NATS client, signed in as ``identity`` (the observer reads every event)."""
        return await nats.connect(
            self.nats_url, inbox_prefix=inbox_prefix(identity), **self.creds(identity).connect_options()
        )

    def state(self) -> dict[str, object]:
        return json.loads((self.data_dir / "stack.json").read_text())

    def pids(self) -> dict[str, int]:
        return dict(self.state()["pids"])  # type: ignore[arg-type]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = 60) -> None:
        """Ctrl-C, as a user stops it; killed if it is not gone within ``timeout_s``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until(predicate, timeout_s: float, what: str, stack: Stack | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    tail = stack.output()[-4000:] if stack else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tail}")


def launch(root: Path, http_port: int, nats_port: int, extra_env: dict[str, str] | None = None) -> Stack:
    """Start `gpuplane up` from the repository as a user would, with its state under ``root``."""
    # No GPUPLANE_FLEET of the caller's: like `make up` on a machine without GPUs, it must fall back to
    # the reference fleet on its own and say so (unless the test names one in ``extra_env``).
    inherited = {k: v for k, v in os.environ.items() if k != "GPUPLANE_FLEET"}
    env = {
        **inherited,
        "GPUPLANE_HTTP_PORT": str(http_port),
        "GPUPLANE_NATS_PORT": str(nats_port),
        "GPUPLANE_DATA_DIR": str(root / "data"),
        "GPUPLANE_CONFIG_DIR": str(root / "config"),
        "GPUPLANE_METRICS_BASE_PORT": "0",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    log = root / f"up-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    s = Stack(proc, root / "data", http_port, nats_port, log)
    try:
        wait_until(lambda: s.state().get("ready") is True, 120, "the stack to be ready", s)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return s


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = launch(tmp_path_factory.mktemp("stack"), free_port(), free_port())
    try:
        yield s
    finally:
        if s.process.poll() is None:
            s.process.send_signal(signal.SIGKILL)
            s.process.wait()


async def first_inventory(stack: Stack, timeout_s: float) -> tuple[str, dict[str, object], float]:
    nc = await stack.nats()
    got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        await got.put((msg.subject, msg.data))

    try:
        started = time.monotonic()
        await nc.subscribe("gpuplane.inventory.>", cb=cb)
        subject, data = await asyncio.wait_for(got.get(), timeout_s)
        return subject, json.loads(data), time.monotonic() - started
    finally:
        await nc.close()


def test_healthz_is_green_as_soon_as_up_says_it_is_up(stack: Stack) -> None:
    # First in the file: no time has passed since the banner; "up" must already mean healthy.
    r = stack.http.get("/healthz", timeout=10)
    assert r.status_code == 200, r.json()


def test_banner_says_where_everything_is_and_that_gpus_are_simulated(stack: Stack) -> None:
    out = stack.output()
    assert "gpuplane is up" in out
    assert f"http://127.0.0.1:{stack.http_port}" in out
    assert stack.nats_url in out
    assert "postgresql://gpuplane:***@127.0.0.1:" in out
    assert f"{stack.api}/?token={stack.token}" in out
    assert f"nats://observer:{stack.creds(Identity.OBSERVER).password}@127.0.0.1:{stack.nats_port}" in out
    assert "NVIDIA RTX A5500" in out and "NVIDIA RTX A400" in out
    assert "source: simulated" in out and "SIMULATED" in out
    assert "NO GPU FOUND" in out


def test_api_lists_the_two_reference_gpus_as_simulated(stack: Stack) -> None:
    body = stack.http.get("/api/system/gpus", timeout=5).json()
    assert body["source"] == "simulated"
    assert [(g["index"], g["name"], g["vram_total_mb"], g["compute_capability"]) for g in body["gpus"]] == [
        (0, "NVIDIA RTX A5500", 24564, "8.6"),
        (1, "NVIDIA RTX A400", 4094, "8.6"),
    ]


def test_nats_subscriber_gets_inventory_within_5_s(stack: Stack) -> None:
    subject, body, waited = asyncio.run(first_inventory(stack, 5))
    assert subject.startswith("gpuplane.inventory.")
    assert body["type"] == "gpuplane.inventory.v1" and body["source"] == "simulated"
    assert waited < 5


def test_healthz_all_green_with_real_database(stack: Stack) -> None:
    def green() -> bool:
        r = stack.http.get("/healthz", timeout=10)
        return r.status_code == 200

    wait_until(green, 30, "healthz to be green", stack)
    body = stack.http.get("/healthz", timeout=10).json()
    assert body["database"]["ok"] is True and body["database"]["detail"].startswith("PostgreSQL 18")
    assert all(s["ok"] for s in body["services"].values())


def test_rescan_through_the_api(stack: Stack) -> None:
    r = stack.http.post("/api/system/gpu-config/detect", timeout=10)
    assert r.status_code == 200
    assert len(r.json()["gpus"]) == 2


def test_metrics_endpoint_has_per_gpu_series(stack: Stack) -> None:
    text = stack.http.get("/metrics", timeout=5).text
    assert "gpuplane_gpu_memory_total_bytes" in text and 'name="NVIDIA RTX A400"' in text


def test_killed_detector_is_restarted_and_inventory_resumes(stack: Stack) -> None:
    old = stack.pids()["detector"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: stack.pids()["detector"] != old, 20, "the detector to be restarted", stack)
    assert f"detector (pid {old}) exited with code -9" in stack.output()
    _, body, _ = asyncio.run(first_inventory(stack, 10))
    assert body["source"] == "simulated"


def test_services_reconnect_when_nats_server_comes_back(stack: Stack) -> None:
    before = stack.pids()
    os.kill(before["nats-server"], signal.SIGKILL)
    wait_until(lambda: stack.pids()["nats-server"] != before["nats-server"], 20, "nats-server restart", stack)
    _, body, _ = asyncio.run(first_inventory(stack, 15))
    assert body["type"] == "gpuplane.inventory.v1"

    def green() -> bool:
        return stack.http.get("/healthz", timeout=10).status_code == 200

    wait_until(green, 30, "every service to report again after the NATS restart", stack)
    after = stack.pids()
    for service in ("detector", "planner", "orchestrator", "router", "api", "postgres"):
        assert after[service] == before[service], f"{service} was restarted instead of reconnecting"


ISSUE_PUT = {
    "strategy": "manual",
    "assignments": [
        {"service": "ai-llm", "gpu_index": 0},
        {"service": "ai-yolo26", "gpu_index": 0},
        {"service": "ai-enrichment", "gpu_index": 1, "vram_budget_override": 3.5},
    ],
}


def test_saving_a_configuration_writes_database_and_yaml(stack: Stack) -> None:
    for strategy in ("manual", "vram_based", "latency_optimized", "isolation_first", "balanced"):
        preview = stack.http.get("/api/system/gpu-config/preview", params={"strategy": strategy}, timeout=10)
        assert preview.status_code == 200, preview.text
        assert all(a["gpu_indices"] for a in preview.json()["assignments"]), (strategy, preview.json())
    r = stack.http.put("/api/system/gpu-config", json=ISSUE_PUT, timeout=10)
    assert r.status_code == 200, r.text
    assert any("3.5 GB" in w and "ai-enrichment budget (6.8 GB)" in w for w in r.json()["warnings"])
    mirror = stack.data_dir.parent / "config" / "gpu-assignments.yml"
    text = mirror.read_text()
    assert "do not edit" in text and "revision: 1" in text and "vram_budget: 3.5" in text


def test_sigint_stops_everything_and_leaves_no_process(stack: Stack) -> None:
    pids = list(stack.pids().values())
    engines = [name for name in stack.pids() if name.startswith("engine-")]
    # nats-server, postgres, five services, workers for two GPUs and the CPU, and the real engines beside them
    assert len(pids) == 10 + len(engines) and 1 <= len(engines) <= 2
    stack.process.send_signal(signal.SIGINT)
    assert stack.process.wait(60) == 0
    time.sleep(0.5)
    assert pids_alive(pids) == []
    assert "gpuplane stopped; no process left behind." in stack.output()
    assert not (stack.data_dir / "stack.json").exists()


def test_saved_configuration_survives_a_restart_of_the_whole_stack(stack: Stack) -> None:
    # After the SIGINT test above: the same data folder, a new `up`.
    again = launch(stack.data_dir.parent, stack.http_port, stack.nats_port)
    try:
        r = again.http.get("/api/system/gpu-config", timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["saved"] is True and body["strategy"] == "manual" and body["revision"] == 1
        budgets = {a["service"]: a["vram_budget_gb"] for a in body["assignments"]}
        assert budgets["ai-enrichment"] == 3.5
    finally:
        again.process.send_signal(signal.SIGINT)
        assert again.process.wait(60) == 0
