"""The attacks of the "lock the doors" issue, repeated against a real `gpuplane up`: each must fail.

One stack for the module, as a user starts it (embedded nats-server and PostgreSQL, simulated reference
fleet, a fast model-group catalog), exporting its traces to a real OTLP receiver. The tests run in file
order; the router is killed last but one, and the last stops the stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import nats.errors
import psycopg
import pytest

from shared.contracts import InventorySource, WorkerState, WorkerStatus
from shared.identities import Identity, inbox_prefix
from shared.subjects import ORCHESTRATOR_APPLY, ROUTER_INFER, inventory, worker_status
from tests.builders import make_gpu
from tests.otlp import Collector, ReceivedSpan, start_collector
from tests.services.stack.test_up import Stack, wait_until
from tests.services.stack.test_up_inference import chat, inference_stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = start_collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[Stack]:
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    with inference_stack(tmp_path_factory.mktemp("security"), traced) as s:
        yield s


class Refusals:
    """What the server refused a client (nats-py reports permission violations asynchronously)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    def said(self, words: str) -> bool:
        return any(words in e for e in self.errors)


async def connect_as(stack: Stack, identity: Identity, refusals: Refusals) -> nats.aio.client.Client:
    return await nats.connect(
        stack.nats_url,
        inbox_prefix=inbox_prefix(identity),
        error_cb=refusals.record,
        allow_reconnect=False,
        **stack.creds(identity).connect_options(),
    )


# --------------------------------------------------------------------------- NATS


def test_nats_refuses_a_connection_without_credentials(stack: Stack) -> None:
    async def attempt() -> None:
        await nats.connect(stack.nats_url, allow_reconnect=False, connect_timeout=3)

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        asyncio.run(attempt())


def test_nobody_can_read_every_users_prompts(stack: Stack) -> None:
    """The first attack: subscribe to gpuplane.> and read the prompts on the router's and workers' subjects."""

    async def attempt() -> tuple[Refusals, list[str]]:
        refusals = Refusals()
        seen: list[str] = []
        for identity in (Identity.OBSERVER, Identity.WORKER, Identity.DETECTOR):
            nc = await connect_as(stack, identity, refusals)

            async def spy(msg: nats.aio.msg.Msg) -> None:
                seen.append(msg.subject)

            for subject in ("gpuplane.>", ROUTER_INFER, "gpuplane.worker.task.>", "gpuplane.stream.>"):
                await nc.subscribe(subject, cb=spy)
            await nc.flush()
            await asyncio.sleep(0.2)
            await nc.close()
        async with httpx.AsyncClient(base_url=stack.api, headers=stack.auth, timeout=30) as client:
            r = await client.post("/v1/chat/completions", json=chat("small-chat-model", 1))
            assert r.status_code == 200
        await asyncio.sleep(0.3)
        return refusals, seen

    refusals, seen = asyncio.run(attempt())
    assert refusals.said('permissions violation for subscription to "gpuplane.>"')
    assert refusals.said(f'permissions violation for subscription to "{ROUTER_INFER}"')
    assert not [s for s in seen if "svc.router" in s or "worker.task" in s or "stream" in s]


def test_the_observer_reads_events_and_publishes_nothing(stack: Stack) -> None:
    async def attempt() -> tuple[Refusals, bytes]:
        refusals = Refusals()
        nc = await connect_as(stack, Identity.OBSERVER, refusals)
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_inventory(msg: nats.aio.msg.Msg) -> None:
            await got.put(msg.data)

        await nc.subscribe("gpuplane.inventory.>", cb=on_inventory)
        first = await asyncio.wait_for(got.get(), 10)
        await nc.publish(ORCHESTRATOR_APPLY, b'{"type": "gpuplane.orchestrator.apply.request.v1"}')
        await nc.publish("gpuplane.config.changed", b"{}")
        await nc.flush()
        await asyncio.sleep(0.3)
        await nc.close()
        return refusals, first

    refusals, first = asyncio.run(attempt())
    assert json.loads(first)["type"] == "gpuplane.inventory.v1"
    assert refusals.said(f'permissions violation for publish to "{ORCHESTRATOR_APPLY}"')
    assert refusals.said('permissions violation for publish to "gpuplane.config.changed"')
    status = stack.http.get("/api/system/gpu-config/status").json()
    assert status["run"] is None, "the observer's apply reached the orchestrator"


def test_a_worker_cannot_call_the_orchestrator_nor_speak_for_another_host(stack: Stack) -> None:
    evil_inventory = {
        "type": "gpuplane.inventory.v1",
        "host": "evil",
        "source": "nvml",
        "gpus": [make_gpu(0, name="NVIDIA H100").model_dump(mode="json")],
    }

    def status(host: str, worker_id: str) -> bytes:
        return (
            WorkerStatus(
                worker_id=worker_id,
                host=host,
                device="cuda:0",
                gpu_index=0,
                backend="fake",
                state=WorkerState.READY,
                slots=8,
                in_flight=0,
                queue_depth=0,
                groups_loaded=("small-chat",),
                models=("small-chat-model",),
                latency_avg_s=0.001,
                sequence=1,
            )
            .model_dump_json()
            .encode()
        )

    async def attempt() -> Refusals:
        refusals = Refusals()
        nc = await connect_as(stack, Identity.WORKER, refusals)
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(ORCHESTRATOR_APPLY, b'{"type": "gpuplane.orchestrator.apply.request.v1"}', timeout=1)
        await nc.publish(inventory("evil"), json.dumps(evil_inventory).encode())
        await nc.publish(worker_status("evil", "evil-cuda0"), status("evil", "evil-cuda0"))
        # Its own host's subject, but a body that speaks for another worker: dropped by the router.
        await nc.publish(worker_status("vm", "spoof"), status("vm", "vm-cuda0"))
        await nc.flush()
        await asyncio.sleep(0.5)
        await nc.close()
        detector = await connect_as(stack, Identity.DETECTOR, refusals)
        await detector.publish(inventory("evil"), json.dumps(evil_inventory).encode())
        await detector.flush()
        await asyncio.sleep(0.3)
        await detector.close()
        return refusals

    refusals = asyncio.run(attempt())
    assert refusals.said(f'permissions violation for publish to "{ORCHESTRATOR_APPLY}"')
    assert refusals.said('permissions violation for publish to "gpuplane.inventory.evil"')
    assert refusals.said('permissions violation for publish to "gpuplane.worker.status.evil.evil-cuda0"')
    hosts = stack.http.get("/api/system/gpus").json()["hosts"]
    assert {h["host"] for h in hosts} == {"vm"}
    assert all(h["source"] == InventorySource.SIMULATED.value for h in hosts)
    queue = stack.http.get("/api/queue").json()
    simulated = {w["worker_id"] for w in queue["workers"] if not w["worker_id"].endswith("-llamacpp")}
    assert simulated == {"vm-cuda0", "vm-cuda1", "vm-cpu"}
    assert {w["host"] for w in queue["workers"]} == {"vm"}
    assert next(w for w in queue["workers"] if w["worker_id"] == "vm-cuda0")["slots"] != 8


def test_only_admin_may_change_the_streams(stack: Stack) -> None:
    async def attempt() -> tuple[Refusals, int]:
        refusals = Refusals()
        nc = await connect_as(stack, Identity.API, refusals)
        js = nc.jetstream(timeout=1)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
            await js.delete_stream("GPUPLANE_EVENTS")
        with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
            await js.purge_stream("GPUPLANE_EVENTS")
        info = await js.stream_info("GPUPLANE_EVENTS")
        await nc.close()
        return refusals, info.state.messages

    refusals, messages = asyncio.run(attempt())
    assert refusals.said("permissions violation for publish to")
    assert messages > 0


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_asks_everyone_for_a_password_and_its_server_has_no_root_group(stack: Stack) -> None:
    port = stack.output().split("postgresql://gpuplane:***@127.0.0.1:")[1].split("/")[0]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=3)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres:guess@127.0.0.1:{port}/postgres", connect_timeout=3)
    password = (stack.data_dir / "secrets" / "postgres-gpuplane").read_text().strip()
    with psycopg.connect(f"postgresql://gpuplane:{password}@127.0.0.1:{port}/gpuplane", connect_timeout=3) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'id'")
    status = Path(f"/proc/{stack.pids()['postgres']}/status").read_text()
    gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
    groups = next(line for line in status.splitlines() if line.startswith("Groups:")).split()[1:]
    if os.geteuid() == 0:
        assert "0" not in gids and "0" not in groups, status


def test_secrets_are_readable_by_their_owner_only(stack: Stack) -> None:
    secrets = stack.data_dir / "secrets"
    assert secrets.stat().st_mode & 0o777 == 0o700
    files = [p for p in secrets.rglob("*") if p.is_file()]
    assert len(files) >= 11  # admin token, 8 NATS identities, 2 PostgreSQL passwords
    assert all(p.stat().st_mode & 0o077 == 0 for p in files), [oct(p.stat().st_mode) for p in files]
    assert stack.token not in stack.output().split("Login")[0]  # the token appears in the login link only


# --------------------------------------------------------------------------- HTTP


PUT = {"strategy": "manual", "assignments": [{"service": "ai-llm", "gpu_index": 0}]}


def test_the_done_when_of_http_access(stack: Stack) -> None:
    url = f"{stack.api}/api/system/gpu-config"
    assert httpx.put(url, json=PUT, timeout=10).status_code == 401
    assert httpx.put(url, json=PUT, headers=stack.auth, timeout=10).status_code == 200
    evil = httpx.put(url, json=PUT, headers={**stack.auth, "Origin": "http://evil.example"}, timeout=10)
    assert evil.status_code == 403
    assert httpx.get(f"{stack.api}/healthz", headers={"Host": "attacker.example"}, timeout=10).status_code == 421
    # What any page may POST to localhost: text/plain, no credential, no run recorded.
    apply = httpx.post(f"{url}/apply", content="{}", headers={"Content-Type": "text/plain"}, timeout=10)
    assert apply.status_code in (401, 415)
    assert stack.http.get("/api/system/gpu-config/status").json()["run"] is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"strategy": "manual", "assignments": [{"service": "ai-llm", "gpu_index": 2147483648}]}', 422),
        (b'{"strategy": "manual", "assignments": [{"service": "ai-llm", "vram_budget_override": NaN}]}', 422),
        (b'{"strategy": "manual", "assignments": [{"service": "ai-llm", "vram_budget_override": Infinity}]}', 422),
        (b'{"strategy": "manual", "assignments": [{"service": "\\ud800"}]}', 422),
        (b'{"strategy": "manual", "assignments": [{"service": "ai*star"}]}', 422),
        (b'{"strategy": "' + b"x" * (10 * 1024 * 1024) + b'"}', 413),
    ],
)
def test_bad_inputs_are_4xx_not_5xx(stack: Stack, body: bytes, status: int) -> None:
    r = stack.http.put("/api/system/gpu-config", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert "127.0.0.1" not in r.text and "psycopg" not in r.text


def test_a_10_mb_inference_body_is_413_in_openais_shape(stack: Stack) -> None:
    text = "x" * (10 * 1024 * 1024)
    r = stack.http.post("/v1/chat/completions", json=chat("small-chat-model", 1) | {"messages": [{"content": text}]})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"


def test_inference_keys_through_the_cli(stack: Stack) -> None:
    import subprocess
    import sys

    env = {**os.environ, "GPUPLANE_DATA_DIR": str(stack.data_dir), "GPUPLANE_HTTP_PORT": str(stack.http_port)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "keys", *args], env=env, capture_output=True, text=True, timeout=60
        )

    made = cli("create", "team-a", "--max-priority", "normal", "--rpm", "600")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("gpk_") and "shown this once" in made.stderr
    listed = cli("list")
    assert "team-a" in listed.stdout and key not in listed.stdout
    with httpx.Client(base_url=stack.api, headers={"Authorization": f"Bearer {key}"}, timeout=30) as team:
        assert team.post("/v1/chat/completions", json=chat("small-chat-model", 2)).status_code == 200
        assert team.post("/v1/chat/completions", json=chat("small-chat-model", 3, priority="high")).status_code == 403
        assert team.put("/api/system/gpu-config", json=PUT).status_code == 403
        assert cli("revoke", "team-a").returncode == 0
        assert team.post("/v1/chat/completions", json=chat("small-chat-model", 4)).status_code == 401


def test_the_audit_trail_lists_the_saves_with_the_tokens_name(stack: Stack) -> None:
    def saves() -> list[dict[str, object]]:
        return [r for r in stack.http.get("/api/system/audit", params={"action": "config_save"}).json()["records"]]

    wait_until(lambda: len(saves()) >= 1, 10, "the save to be audited", stack)
    save = saves()[-1]
    assert save["actor"] == "admin" and save["address"] == "127.0.0.1" and save["target"]["revision"] == "1"
    actions = {r["action"] for r in stack.http.get("/api/system/audit", params={"limit": 500}).json()["records"]}
    assert {"config_save", "auth_failure", "key_create", "key_revoke"} <= actions


# --------------------------------------------------------------------------- traces


def test_one_chat_request_is_one_trace_from_the_gateway_to_the_engine(stack: Stack, collector: Collector) -> None:
    r = stack.http.post("/v1/chat/completions", json=chat("coder-model", 7))
    assert r.status_code == 200
    trace_id = r.headers["X-Trace-Id"]
    assert r.headers["traceresponse"].startswith(f"00-{trace_id}-")

    def spans() -> list[ReceivedSpan]:
        return [s for s in collector.received() if s.trace_id == trace_id]

    def roots() -> list[tuple[str, str]]:
        ids = {s.span_id for s in spans()}
        return [(s.service, s.name) for s in spans() if s.parent_id not in ids]

    def engine_span() -> ReceivedSpan | None:
        return next(
            (s for s in spans() if s.service == "gpuplane-worker" and s.name == "POST /v1/chat/completions"), None
        )

    def complete() -> bool:
        # Each process exports on its own schedule: wait for the gateway's own span (it ends last) and the engine's.
        return roots() == [("gpuplane-api", "POST /v1/chat/completions")] and engine_span() is not None

    wait_until(complete, 20, "one trace from the api to the worker's engine, its spans all exported", stack)
    by_id = {s.span_id: s for s in spans()}
    span = engine_span()
    assert span is not None
    chain = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append((span.service, span.name))
    # One hop: the gateway's call to the engine is the engine's parent; no router, no NATS on the way.
    assert chain[0] == ("gpuplane-api", "POST /chat/completions")
    assert chain[-1] == ("gpuplane-api", "POST /v1/chat/completions")
    assert {service for service, _ in chain} == {"gpuplane-api"}
    assert not [s for s in spans() if s.attributes.get("messaging.system") == "nats"]
    assert not [s for s in collector.received() if "heartbeat" in s.name or "worker.status" in s.name]


# --------------------------------------------------------------------------- lost answers


def test_killing_the_router_under_200_chat_requests_loses_none(stack: Stack) -> None:
    """The gateway places /v1 requests itself and sends them to the engines: the router service (which serves
    requests sent over NATS) can die with 50 or more of them in the gateway's hands, and none is lost."""
    victim = stack.pids()["router"]

    async def one(client: httpx.AsyncClient, i: int) -> int:
        r = await client.post("/v1/chat/completions", json=chat(("big-chat-model", "coder-model")[i % 2], i))
        return r.status_code

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=stack.api, headers=stack.auth, timeout=120, limits=limits) as client:
            sending = asyncio.gather(*(one(client, i) for i in range(200)))
            held = 0
            deadline = time.monotonic() + 30
            while held < 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                queue = (await client.get("/api/queue")).json()["router"]
                held = queue["in_flight"] + sum(queue["queued"].values())
            os.kill(victim, signal.SIGKILL)
            assert held >= 50, f"the gateway never held 50 of the requests (at most {held})"
            return await sending

    codes = asyncio.run(run())
    assert codes == [200] * 200, codes
    wait_until(lambda: stack.pids()["router"] != victim, 20, "the router to be restarted", stack)
    wait_until(lambda: httpx.get(f"{stack.api}/healthz", timeout=10).status_code == 200, 30, "healthz", stack)


def test_healthz_notices_a_dead_router_within_3_s(stack: Stack) -> None:
    wait_until(lambda: httpx.get(f"{stack.api}/healthz", timeout=10).status_code == 200, 30, "healthz", stack)
    os.kill(stack.pids()["router"], signal.SIGKILL)
    killed = time.monotonic()
    r = httpx.get(f"{stack.api}/healthz", timeout=10)
    while r.json()["services"]["router"]["ok"] and time.monotonic() - killed < 10:
        r = httpx.get(f"{stack.api}/healthz", timeout=10)
    assert r.status_code == 503 and r.json()["services"]["router"]["ok"] is False
    assert time.monotonic() - killed < 3
