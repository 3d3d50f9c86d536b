"""The engines (llama.cpp servers, one core each) and the gpuplane stack in front of them, started as a user does.

- Each engine: ``python -m gpuplane_runtime.llamacpp --threads 1`` (llama.cpp's C++ HTTP server), pinned
  with ``taskset`` to a core of its own (two engines' threads on one core collapse to a few tokens a second).
  Not niced: on a machine shared with other work, a niced engine gets a fraction of its core.
- The stack: nats-server, ``gpuplane router``, one ``gpuplane worker --backend openai`` per engine (it
  advertises the engine's URL), and ``gpuplane api``, the gateway whose data plane sends each /v1 request
  straight to the engine it picks. The routing settings go to every gpuplane process as environment.

The processes are started and stopped with ``bench.path``'s helpers (each stopped by its pid).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.path.load import get_json
from bench.path.peers import (
    GPUPLANE_ADMIN_TOKEN,
    HOST,
    REPO,
    NotRun,
    Process,
    Processes,
    _gpuplane_credential,
    free_port,
    stack_env,
    wait_for_port,
)
from bench.path.peers import Running as PathRunning

MODEL = "smollm2-135m"
ENGINE_PARALLEL = 2
ENGINE_CTX = 4096
READY_TIMEOUT_S = 120.0

MODEL_GROUPS = f"""\
# Written by bench/engines: the one model the llama.cpp engines serve.
cpu_reload_fraction: 0.2
groups:
  - id: smollm2
    vram_gb: 1
    load_time_s: 0
    models:
      - {{id: {MODEL}, kind: chat, latency_s: 1.0}}
"""


@dataclass(frozen=True)
class Variant:
    """One routing setting the run measures."""

    name: str
    policy: str
    prefix_affinity: bool

    def env(self, prefix_field: bool) -> dict[str, str]:
        """The gateway's routing settings; GPUPLANE_PREFIX_AFFINITY only where the settings have the field."""
        env = {"GPUPLANE_ROUTING_POLICY": self.policy}
        if prefix_field:
            env["GPUPLANE_PREFIX_AFFINITY"] = "true" if self.prefix_affinity else "false"
        return env


VARIANTS = (
    Variant("prefix affinity on", "affinity", True),
    Variant("prefix affinity off", "affinity", False),
    Variant("round robin", "round_robin", False),
)


def prefix_affinity_available() -> bool:
    """Whether the router's settings know ``prefix_affinity`` (GPUPLANE_PREFIX_AFFINITY)."""
    from services.router.settings import RouterSettings

    return "prefix_affinity" in RouterSettings.model_fields


def engine_cpus(count: int) -> list[int | None]:
    """A core for each engine, round the cores this process may use (None: taskset is missing)."""
    if not Path("/usr/bin/taskset").exists() and not any(
        (Path(p) / "taskset").exists() for p in os.environ.get("PATH", "").split(os.pathsep)
    ):
        return [None] * count
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return [usable[i % len(usable)] for i in range(count)]


@dataclass
class Engine:
    index: int
    port: int
    cpu: int | None
    process: Process

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def chat_url(self) -> str:
        return f"{self.url}/chat/completions"


def engine_argv(port: int, cpu: int | None) -> list[str]:
    argv = [
        sys.executable, "-m", "gpuplane_runtime.llamacpp", "--port", str(port), "--threads", "1",
        "--parallel", str(ENGINE_PARALLEL), "--ctx", str(ENGINE_CTX), "--alias", MODEL,
    ]  # fmt: skip
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return [*pin, *argv]


def start_engines(procs: Processes, run_dir: Path, count: int) -> list[Engine]:
    engines = []
    for index, cpu in enumerate(engine_cpus(count)):
        port = free_port()
        process = procs.start(f"engine-{index}", engine_argv(port, cpu), run_dir / f"engine-{index}.log", cwd=REPO)
        engines.append(Engine(index, port, cpu, process))
    for engine in engines:
        wait_engine(engine)
    return engines


def wait_engine(engine: Engine, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until ``/health`` says ok (the model is loaded), then one tiny request that shares no prompt with the
    workload (the first request's one-time costs stay out of the figures; the prompt cache stays cold)."""
    wait_for_port(engine.port, engine.process, timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError):
            status, _ = get_json(HOST, engine.port, "/health")
            if status == 200:
                break
        if engine.process.popen.poll() is not None or time.monotonic() > deadline:
            raise NotRun(f"engine {engine.index} not healthy: {engine.process.log_tail(600)}")
        time.sleep(0.2)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
    status, answer = get_json(HOST, engine.port, "/v1/chat/completions", method="POST", body=body, timeout_s=60)
    if status != 200:
        raise NotRun(f"engine {engine.index} answered {status}: {str(answer)[:300]}")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: ``llamacpp:name value`` lines as {name: value} (comments and labelled series left out)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            found[name.removeprefix("llamacpp:")] = float(value.split()[0])
    return found


def engine_metrics(engine: Engine) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{HOST}:{engine.port}/metrics", timeout=10) as response:
        return parse_metrics(response.read().decode())


def count_tokens(engine: Engine, text: str) -> int | None:
    """Tokens in ``text`` by the engine's tokenizer (``POST /tokenize``); None when it cannot say."""
    with contextlib.suppress(OSError, ValueError):
        status, answer = get_json(HOST, engine.port, "/tokenize", method="POST", body={"content": text}, timeout_s=30)
        if status == 200 and isinstance(answer, dict) and isinstance(answer.get("tokens"), list):
            return len(answer["tokens"])
    return None


@dataclass
class Gateway:
    """The gpuplane stack in front of the engines: where to send requests, and what it runs."""

    chat_url: str
    headers: dict[str, str]
    http_port: int
    processes: list[Process]
    commands: list[str]
    settings: str
    workers: dict[str, int] = field(default_factory=dict)
    """Worker id -> engine index."""
    policy: str | None = None
    """The policy the gateway's data plane says it uses."""


def start_gateway(procs: Processes, folder: Path, engines: Sequence[Engine], routing_env: Mapping[str, str]) -> Gateway:
    from services.stack import embedded

    folder.mkdir(parents=True, exist_ok=True)
    groups = folder / "model_groups.yml"
    groups.write_text(MODEL_GROUPS)
    nats_port = free_port()
    _, nats_argv = embedded.prepare_nats(folder, nats_port)
    nats = procs.start("nats-server", nats_argv, folder / "nats-stdout.log")
    processes = [nats]
    wait_for_port(nats_port, nats, 20)
    http_port = free_port()
    env = {
        **stack_env(folder, groups, nats_port),
        "GPUPLANE_SEED": "0",
        **routing_env,
    }
    gpuplane = [sys.executable, "-m", "services.cli"]
    shown_env = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("GPUPLANE_"))
    commands = [" ".join(nats_argv), f"(each gpuplane command with {shown_env})"]

    def start(label: str, args: list[str]) -> Process:
        process = procs.start(label, [*gpuplane, *args], folder / f"{label}.log", env=env, cwd=REPO)
        commands.append("gpuplane " + " ".join(args))
        processes.append(process)
        return process

    start("router", ["router"])
    workers: dict[str, int] = {}
    for engine in engines:
        worker_id = f"engine-{engine.index}"
        workers[worker_id] = engine.index
        start(
            worker_id,
            [
                "worker", "--gpu", str(engine.index), "--worker-id", worker_id, "--backend", "openai",
                "--upstream-url", engine.url, "--slots", str(ENGINE_PARALLEL),
            ],
        )  # fmt: skip
    api = start("api", ["api", "--http-port", str(http_port)])
    wait_for_port(http_port, api, 60)
    # bench.path's credential helper: an inference key where the gateway can make one, else the admin token.
    from bench.path.load import Target as PathTarget

    running = PathRunning(
        name="gpuplane",
        target=PathTarget(HOST, http_port, {"Authorization": f"Bearer {GPUPLANE_ADMIN_TOKEN}"}),
        roots={},
        version="",
        settings="",
        commands=[],
        processes=processes,
    )
    settings = _gpuplane_credential(running)
    gateway = Gateway(
        chat_url=f"http://{HOST}:{http_port}/v1/chat/completions",
        headers=dict(running.target.headers),
        http_port=http_port,
        processes=processes,
        commands=commands,
        settings=settings,
        workers=workers,
    )
    wait_gateway(gateway, len(engines))
    return gateway


def wait_gateway(gateway: Gateway, engines: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until the gateway's data plane sees every worker eligible (``GET /api/queue``) and lists the model."""
    admin = {"Authorization": f"Bearer {GPUPLANE_ADMIN_TOKEN}"}
    deadline = time.monotonic() + timeout_s
    problem = "nothing answered yet"
    while time.monotonic() < deadline:
        for process in gateway.processes:
            if process.popen.poll() is not None:
                raise NotRun(f"{process.label} exited ({process.popen.returncode}): {process.log_tail(600)}")
        try:
            status, answer = get_json(HOST, gateway.http_port, "/api/queue", admin)
            if status == 200 and isinstance(answer, dict):
                eligible = [w["worker_id"] for w in answer.get("workers", []) if w.get("eligible")]
                gateway.policy = (answer.get("router") or {}).get("policy")
                problem = f"eligible workers: {eligible}"
                if len(eligible) >= engines:
                    status, listed = get_json(HOST, gateway.http_port, "/v1/models", gateway.headers)
                    ids = [m.get("id") for m in listed.get("data", [])] if isinstance(listed, dict) else []
                    if status == 200 and MODEL in ids:
                        return
                    problem = f"GET /v1/models: {status}, models {ids}"
            else:
                problem = f"GET /api/queue: {status} {str(answer)[:200]}"
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        time.sleep(0.25)
    raise NotRun(f"the gateway was not ready within {timeout_s:g} s: {problem}")
