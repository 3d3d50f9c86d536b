"""Each service runs alone from its CLI flags (as in a container), against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import pytest

from services.stack.embedded import free_port
from tests.realdeps import NatsServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


async def one_inventory(url: str) -> dict[str, object]:
    nc = await nats.connect(url)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        await got.put(msg.data)

    try:
        await nc.subscribe("gpuplane.inventory.>", cb=cb)
        return json.loads(await asyncio.wait_for(got.get(), 10))
    finally:
        await nc.close()


def test_the_api_alone_refuses_to_start_without_an_admin_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPLANE_API_TOKEN")}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "api", "--http-port", str(free_port())],
        cwd=REPO, env={**env, "GPUPLANE_DATA_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "no admin token: set GPUPLANE_API_TOKEN" in done.stderr


def test_detector_and_api_alone_from_flags(own_nats_server: NatsServer, tmp_path: Path) -> None:
    port = free_port()
    fleet = str(REPO / "deploy/fleets/dual-3090-nvlink.yaml")
    detector = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "detector", "--nats-url", own_nats_server.url,
         "--fleet", fleet, "--host-name", "rig-1", "--interval-s", "0.5"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    token = "standalone-admin-token-0123456789"
    api = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "api", "--nats-url", own_nats_server.url, "--http-port", str(port)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "GPUPLANE_API_TOKEN": token, "GPUPLANE_DATA_DIR": str(tmp_path)},
    )
    try:
        body = asyncio.run(one_inventory(own_nats_server.url))
        assert body["host"] == "rig-1" and body["source"] == "simulated"
        assert [g["nvlink_peers"] for g in body["gpus"]] == [[1], [0]]  # type: ignore[union-attr, index]

        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/api/system/gpus", headers={"Authorization": f"Bearer {token}"}, timeout=2
                )
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the api never served the inventory"
            time.sleep(0.2)
        assert [g["name"] for g in r.json()["gpus"]] == ["NVIDIA GeForce RTX 3090"] * 2
    finally:
        for proc in (api, detector):
            proc.send_signal(signal.SIGTERM)
    code = detector.wait(20)
    assert code == 0, (detector.stderr.read().decode() if detector.stderr else "")[-3000:]
    assert api.wait(20) == 0
    assert b"detector stopped" in (detector.stderr.read() if detector.stderr else b"")
