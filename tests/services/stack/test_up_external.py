"""`gpuplane up` with a NATS and a PostgreSQL it did not start: it uses them and leaves them running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.stack.embedded import free_port
from tests.realdeps import NatsServer, Postgres, pids_alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[3]


def test_up_uses_existing_nats_and_database(
    own_nats_server: NatsServer, postgres: Postgres, tmp_path: Path
) -> None:
    http_port = free_port()
    env = {
        **os.environ,
        "GPUPLANE_NATS_URL": own_nats_server.url,
        "GPUPLANE_DATABASE_URL": postgres.url,
        "GPUPLANE_HTTP_PORT": str(http_port),
        "GPUPLANE_DATA_DIR": str(tmp_path / "data"),
        "GPUPLANE_FLEET": str(REPO / "deploy/fleets/two-hosts.yaml"),
        "GPUPLANE_METRICS_BASE_PORT": "0",
    }
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    state_file = tmp_path / "data" / "stack.json"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if state_file.exists() and json.loads(state_file.read_text()).get("ready"):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(log.read_text()[-3000:])
        state = json.loads(state_file.read_text())
        # No nats-server or postgres of its own; a simulated worker per GPU of both hosts, and one CPU worker
        # (and real llama.cpp engines beside them, as many as the cores allow).
        assert {name for name in state["pids"] if not name.startswith("engine-")} == {
            "detector", "planner", "orchestrator", "router", "api",
            "worker-box-a-cuda0", "worker-box-a-cuda1", "worker-box-b-cuda0", "worker-box-b-cuda1", "worker-box-a-cpu",
        }
        output = log.read_text()
        assert f"{own_nats_server.url}   (external)" in output
        assert "(external)" in output.split("Database", 1)[1].splitlines()[0]
        assert not (tmp_path / "data" / "nats").exists() and not (tmp_path / "data" / "postgres").exists()

        token = (tmp_path / "data" / "secrets" / "admin-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        body = httpx.get(f"http://127.0.0.1:{http_port}/api/system/gpus", headers=auth, timeout=5).json()
        assert {h["host"] for h in body["hosts"]} == {"box-a", "box-b"}
        assert len(body["gpus"]) == 4
        health = httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=10).json()
        assert health["database"]["ok"] is True

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert pids_alive(list(state["pids"].values())) == []
        # What gpuplane did not start, it does not stop.
        assert own_nats_server.process is not None and own_nats_server.process.poll() is None
        assert postgres.process is not None and postgres.process.poll() is None
    finally:
        if proc.poll() is None:
            proc.kill()
