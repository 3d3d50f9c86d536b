"""The paths under test, each started as its users start it, in front of the same two fake upstreams.

- ``direct``: the client straight to upstream ``a``.
- ``gpuplane``: gateway (auth on) -> router -> two workers (``--backend openai``, one per upstream), over
  its own nats-server; the same ``gpuplane`` commands a user runs.
- ``litellm``: the LiteLLM proxy from PyPI, in its own venv; both upstreams as one model group.
- ``vllm-router``: from PyPI, in its own venv; round robin.
- ``nginx``: Debian's; round robin with keep-alive to the upstreams: the floor for one proxy hop.

A peer that cannot be installed or started raises ``NotRun`` with the reason, and the benchmark goes on.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.path import cpu
from bench.path.load import Target, get_json, request_body
from bench.path.upstream import MODEL

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
LITELLM_MASTER_KEY = "sk-bench-path-master-key"
GPUPLANE_ADMIN_TOKEN = "bench-path-admin-token-0123456789"
READY_TIMEOUT_S = 180.0
"""LiteLLM imports for many seconds on a small machine, more while the others start beside it."""
INSTALL_TIMEOUT_S = 900.0


class NotRun(Exception):
    """A path that could not be installed or started; the message says why."""


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class Process:
    label: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Processes:
    """Every process the benchmark starts; each stopped by its pid (its descendants by theirs)."""

    def __init__(self) -> None:
        self.started: list[Process] = []
        self._lock = threading.Lock()

    def start(
        self,
        label: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Process:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            # A session of its own: the terminal's Ctrl-C reaches the benchmark alone, which stops them in order.
            popen = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        process = Process(label, list(argv), popen, log)
        with self._lock:
            self.started.append(process)
        return process

    def stop(self, processes: Sequence[Process] | None = None, timeout_s: float = 15.0) -> None:
        """SIGTERM each (last started first), then SIGKILL what is left of it and of its descendants."""
        chosen = list(reversed(processes if processes is not None else self.started))
        for process in chosen:
            stats = cpu.all_stats()
            below = [pid for pid in cpu.descendants(process.pid, stats) if pid != process.pid]
            if process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.popen.send_signal(signal.SIGTERM)
                try:
                    process.popen.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    process.popen.kill()
                    process.popen.wait()
            for pid in below:
                left = cpu.read_stat(pid)
                if left is not None and left.comm == stats[pid].comm:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            with self._lock:
                if process in self.started:
                    self.started.remove(process)


# ---------------------------------------------------------------------------------------------- upstreams


@dataclass
class Upstream:
    name: str
    port: int
    process: Process

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def set_delay(self, ms: float) -> None:
        status, _ = get_json(HOST, self.port, "/_bench/delay", method="POST", body={"ms": ms})
        if status != 200:
            raise RuntimeError(f"upstream {self.name} refused the delay {ms} ms ({status})")

    def served(self) -> int:
        status, answer = get_json(HOST, self.port, "/_bench/stats")
        if status != 200 or not isinstance(answer, dict):
            raise RuntimeError(f"upstream {self.name} gave no stats ({status})")
        return int(answer["served"])


def free_port() -> int:
    from services.stack.embedded import free_port as free

    return free(HOST)


def wait_for_port(port: int, process: Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise NotRun(f"{process.label} exited ({process.popen.returncode}): {process.log_tail(600)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise NotRun(f"{process.label} did not listen on port {port} within {timeout_s:g} s")


def start_upstreams(procs: Processes, run_dir: Path, names: Sequence[str] = ("a", "b")) -> list[Upstream]:
    found = []
    for name in names:
        port = free_port()
        argv = [sys.executable, "-m", "bench.path.upstream", "--port", str(port), "--model", MODEL]
        process = procs.start(f"upstream-{name}", argv, run_dir / f"upstream-{name}.log", cwd=REPO)
        found.append(Upstream(name, port, process))
    for upstream in found:
        wait_for_port(upstream.port, upstream.process, 20)
    return found


# ---------------------------------------------------------------------------------------------- installing


@dataclass
class Installer:
    """Installs what a peer needs: Debian packages with apt-get (as root), PyPI ones in a venv each."""

    work_dir: Path
    allowed: bool
    _apt_updated: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    done: list[str] = field(default_factory=list)
    """What was installed in this run, for the report."""

    def debian(self, binary: str, package: str) -> str:
        """The path of ``binary``, installing ``package`` first where it is missing."""
        found = shutil.which(binary) or next(
            (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()), None
        )
        if found:
            return found
        command = f"apt-get update && apt-get install -y {package}"
        if not self.allowed:
            raise NotRun(f"{binary} is not installed ({command}; --no-install was given)")
        if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise NotRun(f"{binary} is not installed and this is no Debian root shell to install it: {command}")
        with self._lock:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            log = self.work_dir / f"apt-{package}.log"
            with open(log, "ab") as out:
                if not self._apt_updated:
                    subprocess.run(
                        ["apt-get", "update"], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=INSTALL_TIMEOUT_S
                    )
                    self._apt_updated = True
                done = subprocess.run(
                    ["apt-get", "install", "-y", package],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    timeout=INSTALL_TIMEOUT_S,
                )
            if done.returncode != 0:
                raise NotRun(f"apt-get install -y {package} failed ({done.returncode}); see {log}")
            self.done.append(f"apt-get install -y {package}")
        found = shutil.which(binary) or (
            str(Path("/usr/sbin") / binary) if (Path("/usr/sbin") / binary).exists() else None
        )
        if not found:
            raise NotRun(f"apt-get installed {package} but {binary} is not on PATH")
        return found

    def venv(self, name: str, requirement: str, executable: str) -> Path:
        """``<work dir>/<name>-venv/bin/<executable>``, made with ``pip install <requirement>`` where missing."""
        venv = self.work_dir / f"{name}-venv"
        binary = venv / "bin" / executable
        if binary.exists():
            return binary
        if not self.allowed:
            raise NotRun(f"{binary} is missing (pip install {requirement!r} into {venv}; --no-install was given)")
        log = self.work_dir / f"{name}-install.log"
        with open(log, "wb") as out:
            made = subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT_S,
            )
            if made.returncode == 0:
                made = subprocess.run(
                    [str(venv / "bin" / "pip"), "install", requirement],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=INSTALL_TIMEOUT_S,
                )
        if made.returncode != 0 or not binary.exists():
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise NotRun(f"pip install {requirement!r} into {venv} failed: {tail[0][:300]}")
        self.done.append(f"{venv}/bin/pip install {shlex.quote(requirement)}")
        return binary


def venv_package_version(binary: Path, distribution: str) -> str:
    python = binary.parent / "python"
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    return found.stdout.strip() or "unknown"


# ---------------------------------------------------------------------------------------------- paths


@dataclass
class Context:
    procs: Processes
    run_dir: Path
    installer: Installer
    upstreams: list[Upstream]
    log: Callable[[str], None]


@dataclass
class Running:
    """A path that answers: where to send requests, and which processes are its own."""

    name: str
    target: Target
    roots: dict[str, list[int]]
    """Named processes whose CPU (children included) is the path's cost."""
    version: str
    settings: str
    commands: list[str]
    processes: list[Process] = field(default_factory=list)
    spread_targets: list[Target] = field(default_factory=list)
    """Where throughput runs send their connections, split evenly, when not all to ``target``."""

    @property
    def load_targets(self) -> list[Target]:
        return self.spread_targets or [self.target]


def _inherited_env() -> dict[str, str]:
    """The environment without gpuplane's settings or a venv of the caller's, so each peer gets only ours."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GPUPLANE_") and k != "VIRTUAL_ENV"}



def stack_env(folder: Path, groups: Path, nats_port: int) -> dict[str, str]:
    """The environment of the gpuplane processes a benchmark starts: its NATS, data folder and catalog, the
    admin token, no metrics, and no detector (workers are told their VRAM and need not wait for an inventory)."""
    return {
        **_inherited_env(),
        "GPUPLANE_NATS_URL": f"nats://{HOST}:{nats_port}",
        "GPUPLANE_DATA_DIR": str(folder / "data"),
        "GPUPLANE_HOST_NAME": "bench",
        "GPUPLANE_MODEL_GROUPS_FILE": str(groups),
        "GPUPLANE_API_TOKEN": GPUPLANE_ADMIN_TOKEN,
        "GPUPLANE_METRICS_PORT": "0",
        "GPUPLANE_VRAM_MB": "81920",
        "GPUPLANE_INVENTORY_WAIT_S": "0",
        "PYTHONUNBUFFERED": "1",
    }

def _shown(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def wait_ready(running: Running, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until ``GET /v1/models`` lists the model and one chat request is answered with 200."""
    target = running.target
    deadline = time.monotonic() + timeout_s
    problem = "nothing answered yet"
    listed = False
    while time.monotonic() < deadline:
        for process in running.processes:
            if process.popen.poll() is not None:
                raise NotRun(f"{process.label} exited ({process.popen.returncode}): {process.log_tail(600)}")
        try:
            if not listed:
                status, answer = get_json(target.host, target.port, f"{target.prefix}/models", target.headers)
                ids = [m.get("id") for m in answer.get("data", [])] if isinstance(answer, dict) else []
                listed = status == 200 and MODEL in ids
                problem = f"GET /v1/models: {status}, models {ids}"
            if listed:
                status, answer = get_json(
                    target.host,
                    target.port,
                    target.chat_path,
                    target.headers,
                    method="POST",
                    body=json.loads(request_body()),
                    timeout_s=30,
                )
                if status == 200:
                    return
                problem = f"POST /v1/chat/completions: {status} {str(answer)[:300]}"
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        time.sleep(0.25)
    raise NotRun(f"{running.name} not ready within {timeout_s:g} s: {problem}")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def start_direct(ctx: Context) -> Running:
    upstream = ctx.upstreams[0]
    loop = f"uvloop {_version('uvloop')}" if _version("uvloop") else "asyncio"
    return Running(
        name="direct",
        target=Target(HOST, upstream.port),
        roots={},
        version=f"fake upstream: Python {sys.version.split()[0]}, {loop}, httptools {_version('httptools')}",
        settings=f"client straight to upstream {upstream.name} (throughput runs: half the connections to each)",
        commands=[_shown(p.argv) for p in (u.process for u in ctx.upstreams)],
        processes=[upstream.process],
        # One upstream process is a single core's worth: the throughput baseline is both, as a client
        # that balances by itself would use them.
        spread_targets=[Target(HOST, u.port) for u in ctx.upstreams],
    )


def nginx_config(prefix: Path, port: int, upstream_ports: Sequence[int]) -> str:
    """Round robin over the upstreams with kept-alive connections to them; nothing logged per request."""
    servers = "\n".join(f"        server {HOST}:{p};" for p in upstream_ports)
    return textwrap.dedent(
        f"""\
        worker_processes auto;
        daemon off;
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        events {{ worker_connections 8192; }}
        http {{
            access_log off;
            client_body_temp_path {prefix}/client_body;
            proxy_temp_path {prefix}/proxy;
            fastcgi_temp_path {prefix}/fastcgi;
            uwsgi_temp_path {prefix}/uwsgi;
            scgi_temp_path {prefix}/scgi;
            keepalive_requests 1000000;
            upstream bench {{
        {servers}
                keepalive 256;
                keepalive_requests 1000000;
            }}
            server {{
                listen {HOST}:{port} backlog=4096;
                location / {{
                    proxy_pass http://bench;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_buffering off;
                }}
            }}
        }}
        """
    )


def start_nginx(ctx: Context) -> Running:
    binary = ctx.installer.debian("nginx", "nginx")
    prefix = ctx.run_dir / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(prefix, port, [u.port for u in ctx.upstreams]))
    argv = [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)]
    process = ctx.procs.start("nginx", argv, prefix / "stdout.log")
    wait_for_port(port, process, 20)
    found = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    version = (found.stderr or found.stdout).strip().removeprefix("nginx version: ")
    return Running(
        name="nginx",
        target=Target(HOST, port),
        roots={"nginx": [process.pid]},
        version=version,
        settings="round robin, keepalive 256 to the upstreams, worker_processes auto, no auth",
        commands=[_shown(argv)],
        processes=[process],
    )


def litellm_config(upstreams: Sequence[Upstream], routing: str) -> str:
    entries = "".join(
        f"""  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {u.url}
      api_key: fake
"""
        for u in upstreams
    )
    return (
        f"model_list:\n{entries}router_settings:\n  routing_strategy: {routing}\n"
        f"general_settings:\n  master_key: {LITELLM_MASTER_KEY}\n"
    )


def start_litellm(ctx: Context, routing: str = "simple-shuffle") -> Running:
    binary = ctx.installer.venv("litellm", "litellm[proxy]", "litellm")
    folder = ctx.run_dir / "litellm"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(litellm_config(ctx.upstreams, routing))
    port = free_port()
    argv = [str(binary), "--config", str(config), "--host", HOST, "--port", str(port), "--num_workers", "1"]
    # No network here: the model cost map comes from the package, not fetched (with retries) at start.
    env = {**_inherited_env(), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    process = ctx.procs.start("litellm", argv, folder / "litellm.log", env=env, cwd=folder)
    running = Running(
        name="litellm",
        target=Target(HOST, port, {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}),
        roots={"litellm": [process.pid]},
        version=f"litellm {venv_package_version(binary, 'litellm')}",
        settings=f"{routing}, one uvicorn worker, master key as bearer, defaults otherwise (access log on)",
        commands=[f"LITELLM_LOCAL_MODEL_COST_MAP=True {_shown(argv)}"],
        processes=[process],
    )
    wait_for_port(port, process, READY_TIMEOUT_S)
    return running


def start_vllm_router(ctx: Context) -> Running:
    binary = ctx.installer.venv("vllm-router", "vllm-router", "vllm-router")
    folder = ctx.run_dir / "vllm-router"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        str(binary), "--host", HOST, "--port", str(port), "--worker-urls", *(f"http://{HOST}:{u.port}" for u in
        ctx.upstreams), "--policy", "round_robin", "--log-level", "warning",
    ]  # fmt: skip
    process = ctx.procs.start("vllm-router", argv, folder / "vllm-router.log", env=_inherited_env(), cwd=folder)
    wait_for_port(port, process, 60)
    return Running(
        name="vllm-router",
        target=Target(HOST, port),
        roots={"vllm-router": [process.pid]},
        version=f"vllm-router {venv_package_version(binary, 'vllm-router')}",
        settings="round_robin, defaults otherwise, no auth",
        commands=[_shown(argv)],
        processes=[process],
    )


MODEL_GROUPS = f"""\
# Written by bench/path: the one model the fake upstreams serve.
cpu_reload_fraction: 0.2
groups:
  - id: bench
    vram_gb: 1
    load_time_s: 0
    models:
      - {{id: {MODEL}, kind: chat, latency_s: 0.001}}
"""


def start_gpuplane(ctx: Context) -> Running:
    """nats-server, router, one worker per upstream, gateway: the commands a user runs, on free ports."""
    from services.stack import embedded
    from shared import __version__

    folder = ctx.run_dir / "gpuplane"
    folder.mkdir(parents=True, exist_ok=True)
    groups = folder / "model_groups.yml"
    groups.write_text(MODEL_GROUPS)
    nats_port = free_port()
    _, nats_argv = embedded.prepare_nats(folder, nats_port)
    nats = ctx.procs.start("nats-server", nats_argv, folder / "nats-stdout.log")
    wait_for_port(nats_port, nats, 20)
    http_port = free_port()
    env = stack_env(folder, groups, nats_port)
    gpuplane = [sys.executable, "-m", "services.cli"]
    commands = [_shown(nats_argv)]
    processes = [nats]

    def start(label: str, args: list[str]) -> Process:
        process = ctx.procs.start(label, [*gpuplane, *args], folder / f"{label}.log", env=env, cwd=REPO)
        commands.append("gpuplane " + _shown(args))
        processes.append(process)
        return process

    router = start("router", ["router"])
    workers = [
        start(
            f"worker-{i}", ["worker", "--gpu", str(i), "--backend", "openai", "--upstream-url", u.url, "--slots", "64"]
        )
        for i, u in enumerate(ctx.upstreams)
    ]
    api = start("api", ["api", "--http-port", str(http_port)])
    shown_env = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("GPUPLANE_"))
    commands.insert(1, f"(each gpuplane command with {shown_env})")
    roots = {"api": [api.pid], "router": [router.pid]}
    roots.update({p.label: [p.pid] for p in workers})
    roots["nats-server"] = [nats.pid]
    running = Running(
        name="gpuplane",
        target=Target(HOST, http_port, {"Authorization": f"Bearer {GPUPLANE_ADMIN_TOKEN}"}),
        roots=roots,
        version=f"gpuplane {__version__} ({_revision()})",
        settings="",
        commands=commands,
        processes=processes,
    )
    wait_for_port(http_port, api, 60)
    running.settings = _gpuplane_credential(running)
    return running


def _gpuplane_credential(running: Running) -> str:
    """Use an inference key when the gateway can make one (it keeps keys in PostgreSQL), else the admin token."""
    target = running.target
    deadline = time.monotonic() + 30
    while True:
        try:
            status, answer = get_json(
                target.host, target.port, "/api/system/keys", target.headers, method="POST", body={"name": "bench-path"}
            )
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    base = "auth on; router policy default; log level default (INFO)"
    if status in (200, 201) and isinstance(answer, dict) and isinstance(answer.get("key"), str):
        running.target = Target(target.host, target.port, {"Authorization": f"Bearer {answer['key']}"})
        return f"{base}; an inference key as bearer"
    why = answer.get("detail") if isinstance(answer, dict) else status
    return f"{base}; the admin token as bearer (no inference key without PostgreSQL: {str(why)[:120]})"


def _revision() -> str:
    from bench.common import revision

    return revision()


PEERS: dict[str, Callable[[Context], Running]] = {
    "direct": start_direct,
    "gpuplane": start_gpuplane,
    "litellm": start_litellm,
    "vllm-router": start_vllm_router,
    "nginx": start_nginx,
}
"""Every path, in the report's order."""
