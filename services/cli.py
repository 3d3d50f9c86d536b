"""The ``gpuplane`` command: ``up`` runs the whole stack; each service also runs alone; ``config``, ``audit``
and ``keys`` do what the web console does, through the gateway."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from shared.bus.nats import NatsBus
    from shared.identities import Identity
    from shared.settings import CommonSettings

from services import cli_config
from shared import __version__
from shared.contracts import Inventory, PlanPreview
from shared.errors import ConfigError, GpuplaneError, ServiceCrashed

# flag -> settings field, per subcommand. Flags override GPUPLANE_* variables.
COMMON_FLAGS: dict[str, tuple[str, type, str]] = {
    "--nats-url": ("nats_url", str, "NATS server(s), e.g. nats://127.0.0.1:4222"),
    "--host-name": ("host_name", str, "name of this machine in subjects and inventories"),
    "--log-level": ("log_level", str, "DEBUG, INFO, WARNING, ..."),
    "--metrics-port": ("metrics_port", int, "serve Prometheus metrics on this port (0: off)"),
}
SERVICE_FLAGS: dict[str, dict[str, tuple[str, type, str]]] = {
    "detector": {
        "--backend": ("detector_backend", str, "auto, nvml, nvidia-smi, simulated or none"),
        "--fleet": ("fleet", Path, "simulated fleet file (implies --backend simulated)"),
        "--interval-s": ("detect_interval_s", float, "publish at least this often"),
    },
    "planner": {
        "--database-url": ("database_url", str, "PostgreSQL that keeps the configuration"),
        "--catalog-file": ("catalog_file", Path, "GPU service catalog (default config/services.yml)"),
        "--compose-files": ("compose_files", str, "compose files whose annotated services form the catalog"),
        "--config-dir": ("config_dir", Path, "where gpu-assignments.yml is written (default config)"),
        "--default-strategy": ("default_strategy", str, "strategy used until one is saved"),
    },
    "orchestrator": {
        "--database-url": ("database_url", str, "PostgreSQL that keeps the runs"),
        "--compose-files": ("compose_files", str, "the AI stack's base compose files, comma-separated"),
        "--compose-cmd": ("compose_cmd", str, "podman-compose (default) or 'docker compose'"),
        "--config-dir": ("config_dir", Path, "where docker-compose.gpu-override.yml is written (default config)"),
    },
    "router": {},
    "worker": {
        "--gpu": ("gpu", int, "serve GPU N of this host (shorthand for --device cuda:N)"),
        "--device": ("device", str, "cuda:N or cpu"),
        "--backend": ("backend", str, "simulated (default), openai or llamacpp"),
        "--upstream-url": ("upstream_url", str, "openai backend: e.g. http://127.0.0.1:8000/v1"),
        "--worker-id": ("worker_id", str, "default <host>-cuda<N> or <host>-cpu"),
        "--slots": ("slots", int, "requests run at once (default from VRAM: 1, 2 or 3)"),
        "--default-group": ("default_group", str, "model group loaded at start"),
        "--model-groups-file": ("model_groups_file", Path, "model-group catalog (default config/model_groups.yml)"),
        "--speed": ("speed", float, "simulated speed factor (default from the GPU)"),
        "--vram-mb": ("vram_mb", int, "VRAM of the device (default from the inventory)"),
        "--agents": ("agents", bool, "host the agents of placed services with an API (instead of a device)"),
        "--engine-threads": ("engine_threads", int, "llamacpp backend: CPU threads of the engine (default 1)"),
        "--engine-model": ("engine_model", Path, "llamacpp backend: GGUF file (default SmolLM2-135M-Instruct)"),
    },
    "api": {
        "--http-port": ("http_port", int, "port to listen on"),
        "--http-host": ("http_host", str, "address to listen on"),
        "--database-url": ("database_url", str, "PostgreSQL checked by /healthz"),
    },
}
UP_FLAGS: dict[str, tuple[str, type, str]] = {
    "--http-port": ("http_port", int, "API port (default 8080)"),
    "--nats-port": ("nats_port", int, "embedded NATS port (default 4222)"),
    "--nats-url": ("nats_url", str, "use this NATS instead of starting one"),
    "--database-url": ("database_url", str, "use this PostgreSQL instead of starting one"),
    "--data-dir": ("data_dir", Path, "where NATS, PostgreSQL and logs keep data (default .gpuplane)"),
    "--fleet": ("fleet", Path, "simulate this fleet file instead of detecting GPUs"),
}


def _add_flags(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, type, str]]) -> None:
    for flag, (dest, kind, help_text) in flags.items():
        if kind is bool:
            parser.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)


def _overrides(args: argparse.Namespace, flags: dict[str, tuple[str, type, str]]) -> dict[str, Any]:
    return {dest: getattr(args, dest) for dest, _, _ in flags.values() if getattr(args, dest) is not None}


def _run_service(name: str, args: argparse.Namespace) -> int:
    flags = {**COMMON_FLAGS, **SERVICE_FLAGS[name]}
    overrides = _overrides(args, flags)
    if name == "detector":
        from services.detector.main import main as detector_main
        from services.detector.settings import DetectorSettings

        detector_main(DetectorSettings(**overrides))
    elif name == "planner":
        from services.planner.main import main as planner_main
        from services.planner.settings import PlannerSettings

        planner_main(PlannerSettings(**overrides))
    elif name == "orchestrator":
        from services.orchestrator.main import main as orchestrator_main
        from services.orchestrator.settings import OrchestratorSettings

        orchestrator_main(OrchestratorSettings(**overrides))
    elif name == "router":
        from services.router.main import main as router_main
        from services.router.settings import RouterSettings

        router_main(RouterSettings(**overrides))
    elif name == "worker":
        from services.worker.main import main as worker_main
        from services.worker.settings import WorkerSettings

        worker_main(WorkerSettings(**overrides))
    elif name == "api":
        from services.api.main import main as api_main
        from services.api.settings import ApiSettings

        api_main(ApiSettings(**overrides))
    return 0


def _run_up(args: argparse.Namespace) -> int:
    from services.stack.main import run_stack
    from services.stack.settings import StackSettings
    from shared.telemetry import setup_logging

    settings = StackSettings(**_overrides(args, UP_FLAGS))
    setup_logging("up", settings.log_level)
    return asyncio.run(run_stack(settings))


def format_inventories(inventories: Sequence[Inventory]) -> str:
    """A table like nvidia-smi's, one block per host."""
    if not inventories:
        return "No inventory published yet."
    out: list[str] = []
    for inv in inventories:
        flag = "   <<< SIMULATED >>>" if inv.source.value == "simulated" else ""
        out.append(f"host {inv.host}  source {inv.source.value}  {inv.status_message}{flag}")
        if inv.gpus:
            out.append(
                f"  {'GPU':>3}  {'Name':<28} {'Used/Total MB':>15} {'Util':>5} {'Temp':>5} "
                f"{'Power W':>11}  {'CC':>4}  {'NVLink':<8} Health"
            )
        for g in inv.gpus:
            util = f"{g.utilization_percent:.0f}%" if g.utilization_percent is not None else "-"
            temp = f"{g.temperature_c:.0f}C" if g.temperature_c is not None else "-"
            draw = f"{g.power_draw_w:.0f}" if g.power_draw_w is not None else "?"
            power = f"{draw}/{g.power_limit_w:.0f}" if g.power_limit_w is not None else draw
            links = ",".join(str(p) for p in g.nvlink_peers) or "-"
            out.append(
                f"  {g.index:>3}  {g.name:<28} {g.vram_used_mb:>6}/{g.vram_total_mb:<8} {util:>5} {temp:>5} "
                f"{power:>11}  {g.compute_capability or '?':>4}  {links:<8} "
                f"{'ok' if g.healthy else 'UNHEALTHY: ' + (g.health_reason or '')}"
            )
    return "\n".join(out)


def _local_inventories(fleet: Path | None, backend_name: str | None) -> list[Inventory]:
    """Scan this machine now (or simulate ``fleet``), without a stack."""
    from services.detector.backends import open_backend
    from services.detector.core import PublishDecider
    from services.detector.settings import DetectorSettings
    from shared.contracts import utc_now

    detector = DetectorSettings(fleet=fleet) if fleet else DetectorSettings()
    backend = open_backend(
        backend_name or ("simulated" if detector.fleet else detector.detector_backend),
        host=detector.host_name,
        fleet=detector.fleet,
        nvidia_smi=detector.nvidia_smi_path,
    )
    try:
        decider = PublishDecider(interval_s=1.0)
        return [decider.force(scan, 0.0, utc_now()) for scan in backend.scan()]
    finally:
        backend.close()


def _run_cdi_spec(args: argparse.Namespace) -> int:
    from services.orchestrator.simcdi import render_simulated_spec
    from shared.files import write_atomic

    text = render_simulated_spec(_local_inventories(args.fleet, "simulated"))
    if args.output is None:
        print(text, end="")
    else:
        write_atomic(args.output, text)
        print(f"wrote {args.output} (simulated GPUs of {args.fleet})")
    return 0


def _print_inventories(inventories: Sequence[Inventory], as_json: bool) -> None:
    if as_json:
        print(json.dumps([inv.model_dump(mode="json") for inv in inventories], indent=2))
    else:
        print(format_inventories(inventories))


def _run_gpus(args: argparse.Namespace) -> int:
    if args.local:
        _print_inventories(_local_inventories(args.fleet, args.backend), args.json)
        return 0

    from shared.identities import Identity
    from shared.settings import CommonSettings
    from shared.subjects import INVENTORY_ALL

    settings = CommonSettings(**({"nats_url": args.nats_url} if args.nats_url else {}))
    if args.rescan:
        # A rescan changes state: it goes through the gateway, which checks the admin token and audits it.
        cli_config.api_call("POST", "/api/system/gpu-config/detect", args)

    async def fetch() -> list[Inventory]:
        bus = await _connect_as(Identity.OBSERVER, settings, args.timeout_s)
        try:
            return await bus.latest(INVENTORY_ALL, Inventory)
        finally:
            await bus.drain()

    _print_inventories(asyncio.run(fetch()), args.json)
    return 0


async def _connect_as(identity: Identity, settings: CommonSettings, timeout_s: float) -> NatsBus:
    """The CLI's own NATS connection, as ``identity`` with the credentials the settings (or the data dir) give."""
    from shared.bus.nats import connect_once

    credentials = settings.nats_credentials(identity)
    service = f"cli-{identity.value}"
    return await connect_once(
        settings.nats_url, service=service, timeout_s=timeout_s, identity=identity, credentials=credentials
    )


def _run_keys(args: argparse.Namespace) -> int:
    """Inference keys through the gateway's admin API."""
    from urllib.parse import quote

    if args.action in ("create", "revoke") and not args.name:
        raise ConfigError(f"gpuplane keys {args.action} needs the key's NAME")
    if args.action == "create":
        body = {"name": args.name, "max_priority": args.max_priority, "rpm_limit": args.rpm}
        made = cli_config.api_call("POST", "/api/system/keys", args, body)
        print(made["key"])
        print(
            f"key {made['name']!r} created ({made['prefix']}...); shown this once: store it now. "
            "Clients send it as 'Authorization: Bearer <key>' (OPENAI_API_KEY).",
            file=sys.stderr,
        )
        return 0
    if args.action == "revoke":
        cli_config.api_call("DELETE", f"/api/system/keys/{quote(args.name, safe='')}", args)
        print(f"key {args.name!r} revoked")
        return 0
    listed = cli_config.api_call("GET", "/api/system/keys" + ("?include_revoked=true" if args.all else ""), args)
    if not listed["keys"]:
        print("No inference keys. Create one: gpuplane keys create NAME")
        return 0
    print(f"{'Name':<24} {'Prefix':<14} {'Max priority':<13} {'Req/min':>8}  {'Created':<20} {'By':<12} Revoked")
    for k in listed["keys"]:
        print(
            f"{k['name']:<24} {k['prefix']:<14} {k['max_priority'] or 'any':<13} {k['rpm_limit'] or '-':>8}  "
            f"{k['created_at'][:19]:<20} {k['created_by']:<12} {(k['revoked_at'] or '')[:19]}"
        )
    return 0


def _run_nats_init(args: argparse.Namespace) -> int:
    """Create or update gpuplane's JetStream streams on a NATS of your own, as its admin identity."""
    from shared.identities import Identity
    from shared.settings import CommonSettings

    settings = CommonSettings(**({"nats_url": args.nats_url} if args.nats_url else {}))

    async def init() -> None:
        bus = await _connect_as(Identity.ADMIN, settings, args.timeout_s)
        await bus.drain()

    asyncio.run(init())
    print("gpuplane's JetStream streams are in place")
    return 0


def _run_probe(args: argparse.Namespace) -> int:
    """A container healthcheck: exit 0 when ``url`` answers 2xx within the timeout, 1 otherwise."""
    import httpx

    try:
        status = httpx.get(args.url, timeout=args.timeout_s).status_code
    except httpx.HTTPError as exc:
        print(f"gpuplane probe: {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0 if 200 <= status < 300 else 1


def _run_compose_env(args: argparse.Namespace) -> int:
    """A fresh ``.env`` for docker-compose.yml: every secret random, nothing reused."""
    from shared.identities import Identity
    from shared.secrets import random_token, write_secret

    lines = [
        "# Secrets for docker-compose.yml, made by `gpuplane compose-env`. Keep this file to yourself (mode 0600).",
        "# The admin token: the console's login and every change through the API (Authorization: Bearer ...).",
        f"GPUPLANE_API_TOKEN={random_token()}",
        "# Host names the API answers to besides localhost and IP addresses (your server's name).",
        "GPUPLANE_ALLOWED_HOSTS=localhost",
        "# PostgreSQL: the superuser (the postgres container's own) and gpuplane's role, which owns only its database.",
        f"POSTGRES_PASSWORD={random_token()}",
        f"GPUPLANE_DB_PASSWORD={random_token()}",
        "# One NATS identity per process kind (deploy/nats/nats.conf gives each its permissions).",
        *(f"GPUPLANE_NATS_{i.value.upper()}_PASSWORD={random_token()}" for i in Identity),
        "",
    ]
    text = "\n".join(lines)
    if args.output is None:
        print(text, end="")
        return 0
    if args.output.exists() and not args.force:
        raise ConfigError(f"{args.output} exists already; keep it, or pass --force to make new secrets")
    write_secret(args.output, text)
    print(f"wrote {args.output} (mode 0600)")
    return 0


def _run_nats_config(args: argparse.Namespace) -> int:
    """A nats-server authorization block for a NATS of your own, with every identity's permissions."""
    from shared.identities import Identity, render_users

    if args.passwords == "env":
        users = {i: f"$GPUPLANE_NATS_{i.value.upper()}_PASSWORD" for i in Identity}
        print(render_users(users, args.hosts.split(",") if args.hosts else None))
        return 0
    from services.stack.access import nats_authorization, nats_identities

    files = nats_identities(args.data_dir)
    print(nats_authorization(files, args.hosts.split(",") if args.hosts else ()))
    print(f"# credentials files written under {files[Identity.ADMIN].parent}", file=sys.stderr)
    return 0


def format_plan(preview: PlanPreview, title: str) -> str:
    """A plan as tables: services and their GPUs, then VRAM per GPU, then warnings."""
    multi_host = len({g.host for g in preview.gpus}) > 1
    names = {(g.host, g.index): g.name for g in preview.gpus}
    out = [title, ""]
    out.append(f"  {'Service':<16} {'Model':<30} {'VRAM est.':>9}  {'GPU':<34} {'Budget':>7}  Placed by")
    for a in preview.assignments:
        if not a.enabled:
            gpu = "disabled"
        elif not a.gpu_indices:
            gpu = "none"
        else:
            host = f"{a.host}:" if multi_host else ""
            ids = ",".join(f"{host}{i}" for i in a.gpu_indices)
            models = list(dict.fromkeys(names.get((a.host or "", i), "?") for i in a.gpu_indices))
            count = f" x{len(a.gpu_indices)}" if len(models) == 1 and len(a.gpu_indices) > 1 else ""
            gpu = f"{ids} ({', '.join(models)}{count})"
        budget = f"{a.vram_budget_gb:g} GB" if a.vram_budget_gb is not None else "-"
        est = f"{a.vram_estimate_gb:g} GB"
        out.append(f"  {a.service:<16} {a.model[:30]:<30} {est:>9}  {gpu:<34} {budget:>7}  {a.placed_by}")
    if preview.gpus:
        out += ["", f"  {'GPU':<10} {'Name':<28} {'Planned / Capacity':>20}  Services"]
        for g in preview.gpus:
            gpu = f"{g.host}:{g.index}" if multi_host else str(g.index)
            pct = 100 * g.planned_gb / g.capacity_gb if g.capacity_gb else 0
            over = "  OVER" if g.overcommitted else ""
            load = f"{g.planned_gb:.2f} / {g.capacity_gb:.2f} GB {pct:3.0f}%"
            out.append(f"  {gpu:<10} {g.name[:28]:<28} {load:>20}  {', '.join(g.services) or '-'}{over}")
    if preview.warnings:
        out += ["", "Warnings:", *(f"  - {w}" for w in preview.warnings)]
    if preview.message:
        out += ["", preview.message]
    return "\n".join(out)


def _run_plan(args: argparse.Namespace) -> int:
    """Plan locally: the detector's view of this machine (or a fleet file) and the catalog, no stack."""
    from services.planner.catalog import load_catalog
    from services.planner.core.planning import make_plan
    from services.planner.core.render import preview
    from services.planner.core.snapshot import make_problem
    from services.planner.core.strategies import STRATEGY_NAMES, get_strategy
    from services.planner.settings import PlannerSettings

    overrides: dict[str, Any] = {}
    if args.catalog_file:
        overrides["catalog_file"] = args.catalog_file
    if args.compose_files:
        overrides["compose_files"] = args.compose_files
    settings = PlannerSettings(**overrides)
    catalog, source = load_catalog(settings.catalog_file, settings.compose_paths())
    inventories = _local_inventories(args.fleet, args.backend)
    names = STRATEGY_NAMES if args.strategy == "all" else (get_strategy(args.strategy).NAME,)
    where = f"fleet {args.fleet}" if args.fleet else "this machine"
    sources = ", ".join(sorted({inv.source.value for inv in inventories}))
    previews = []
    for name in names:
        plan = make_plan(make_problem(inventories, catalog, headroom_gb=settings.vram_headroom_gb), get_strategy(name))
        previews.append(preview(plan, ()))
    if args.json:
        print("\n".join(p.model_dump_json(indent=2) for p in previews))
        return 0
    blocks = [format_plan(p, f"Plan: {p.strategy}   ({where}, {sources}; catalog {source})") for p in previews]
    print("\n\n".join(blocks))
    return 0


def _run_watch(args: argparse.Namespace) -> int:
    """Print every message on a subject as it arrives: a plain NATS subscriber, nothing decoded."""
    import nats as nats_client

    from shared.errors import BusUnavailable
    from shared.identities import OBSERVER_EVENTS, Identity, inbox_prefix
    from shared.natsauth import redact_url
    from shared.settings import CommonSettings

    settings = CommonSettings(**({"nats_url": args.nats_url} if args.nats_url else {}))
    url = settings.nats_url
    credentials = settings.nats_credentials(Identity.OBSERVER)
    subjects = list(OBSERVER_EVENTS) if args.subject == "gpuplane.>" else [args.subject]
    refused: list[str] = []

    async def quiet(exc: Exception) -> None:
        """Connection errors are reported once below, not as a traceback per attempt."""
        if "permissions violation" in str(exc).lower():
            refused.append(str(exc))
            done.set()

    done = asyncio.Event()
    broken: list[bool] = []

    async def watch() -> None:
        try:
            nc = await asyncio.wait_for(
                nats_client.connect(
                    url,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=quiet,
                    inbox_prefix=inbox_prefix(Identity.OBSERVER),
                    **(credentials.connect_options() if credentials else {}),
                ),
                args.timeout_s,
            )
        except TimeoutError as exc:
            where = redact_url(url)
            raise BusUnavailable(f"no NATS server let the observer in at {where} within {args.timeout_s:g} s") from exc
        count = 0

        async def on_message(msg: Any) -> None:
            nonlocal count
            count += 1
            text = msg.data.decode(errors="replace")
            try:
                print(f"[{msg.subject}] {text if args.full else text[:args.width]}", flush=True)
            except BrokenPipeError:
                # The reader left (`| head -1`); the subscription's error callback would swallow this.
                broken.append(True)
                done.set()
                return
            if args.count and count >= args.count:
                done.set()

        for subject in subjects:
            await nc.subscribe(subject, cb=on_message)
        print(f"watching {', '.join(subjects)} on {redact_url(url)} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        try:
            await done.wait()
        finally:
            await nc.close()
        if refused:
            allowed = ", ".join(OBSERVER_EVENTS)
            raise ConfigError(f"NATS refused: {refused[0]} (the observer reads events only: {allowed})")

    try:
        asyncio.run(watch())
    except KeyboardInterrupt:
        return 130
    if broken:
        raise BrokenPipeError
    return 0


def _run_completion(args: argparse.Namespace) -> int:
    print(cli_config.completion_script(build_parser(), args.shell), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuplane",
        description=__doc__,
        epilog="Shell completion: `source <(gpuplane completion bash)` in ~/.bashrc "
        "(or `source <(gpuplane completion zsh)` in ~/.zshrc).",
    )
    parser.add_argument("--version", action="version", version=f"gpuplane {__version__}",
                        help="print gpuplane's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start NATS, PostgreSQL and every service; Ctrl-C stops them all")
    _add_flags(up, UP_FLAGS)

    for name, extra in SERVICE_FLAGS.items():
        p = sub.add_parser(name, help=f"run the {name} service alone")
        _add_flags(p, {**COMMON_FLAGS, **extra})

    gpus = sub.add_parser("gpus", help="print the GPU inventory (from a running stack, or --local)")
    gpus.add_argument("--nats-url", default=None, help="NATS of the running stack")
    gpus.add_argument("--rescan", action="store_true", help="ask the detectors to rescan first (through the API)")
    gpus.add_argument("--api-url", default=None,
                      help="with --rescan: the gateway (default http://127.0.0.1:$GPUPLANE_HTTP_PORT)")
    gpus.add_argument("--timeout-s", type=float, default=5.0, help="give up on NATS after this long")
    gpus.add_argument("--local", action="store_true", help="scan this machine now, without a stack")
    gpus.add_argument("--fleet", type=Path, default=None, help="with --local: simulate this fleet file")
    gpus.add_argument("--backend", default=None, help="with --local: auto, nvml, nvidia-smi, simulated, none")
    gpus.add_argument("--json", action="store_true", help="print the inventories as JSON (a list, one per host)")

    plan = sub.add_parser("plan", help="print the plan a strategy makes for a fleet (no stack needed)")
    plan.add_argument("--strategy", default="vram_based", help="manual, vram_based, latency_optimized, "
                      "isolation_first, balanced, or all")
    plan.add_argument("--fleet", type=Path, default=None, help="simulated fleet file (default: detect this machine)")
    plan.add_argument("--backend", default=None, help="detector backend when no --fleet: auto, nvml, nvidia-smi, none")
    plan.add_argument("--catalog-file", type=Path, default=None, help="service catalog (default config/services.yml)")
    plan.add_argument("--compose-files", default=None, help="compose files whose annotated services form the catalog")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (the preview API's shape)")

    cdi = sub.add_parser("cdi-spec", help="write a CDI spec for a simulated fleet (podman then 'injects' its GPUs)")
    cdi.add_argument("--fleet", type=Path, default=Path("deploy/fleets/reference.yaml"), help="simulated fleet file")
    cdi.add_argument("--output", type=Path, default=None, help="e.g. /etc/cdi/gpuplane-sim.yaml (default: stdout)")

    keys = sub.add_parser("keys", help="create, list or revoke inference keys (through the API, admin token)")
    keys.add_argument("action", choices=("create", "list", "revoke"))
    keys.add_argument("name", nargs="?", default=None, help="the key's name (create, revoke)")
    keys.add_argument("--max-priority", default=None, choices=("low", "normal", "high"),
                      help="create: the highest priority the key's requests may ask for")
    keys.add_argument("--rpm", type=int, default=None, help="create: requests per minute (default: no limit)")
    keys.add_argument("--all", action="store_true", help="list: revoked keys too")
    keys.add_argument("--api-url", default=None, help="the gateway (default http://127.0.0.1:$GPUPLANE_HTTP_PORT)")
    keys.add_argument("--timeout-s", type=float, default=10.0, help="give up on the gateway after this long")

    init = sub.add_parser("nats-init", help="create gpuplane's JetStream streams on your own NATS (admin identity)")
    init.add_argument("--nats-url", default=None, help="the NATS server")
    init.add_argument("--timeout-s", type=float, default=10.0, help="give up on NATS after this long")

    conf = sub.add_parser("nats-config", help="print the nats-server users and permissions for your own NATS")
    conf.add_argument("--passwords", choices=("files", "env"), default="files",
                      help="files: make credentials files under --data-dir and print bcrypt hashes; "
                      "env: refer to $GPUPLANE_NATS_<IDENTITY>_PASSWORD variables")
    conf.add_argument("--data-dir", type=Path, default=Path(".gpuplane"), help="where the credentials files go")
    conf.add_argument("--hosts", default=None, help="hosts detectors and workers may speak for (default: any)")

    probe = sub.add_parser("probe", help="exit 0 if a URL answers 2xx (container healthchecks)")
    probe.add_argument("url", help="the URL to GET")
    probe.add_argument("--timeout-s", type=float, default=3.0, help="give up after this long (exit 1)")

    env = sub.add_parser("compose-env", help="write a .env of fresh secrets for docker-compose.yml")
    env.add_argument("--output", type=Path, default=None, help="e.g. .env (default: print it)")
    env.add_argument("--force", action="store_true", help="overwrite an existing file")

    watch = sub.add_parser("watch", help="print messages on a NATS subject, e.g. 'gpuplane.inventory.>'")
    watch.add_argument(
        "subject", nargs="?", default="gpuplane.>", help="subject, wildcards allowed (default: every event)"
    )
    watch.add_argument("--nats-url", default=None, help="NATS of the running stack")
    watch.add_argument("--count", type=int, default=0, help="stop after this many messages (0: never)")
    watch.add_argument("--width", type=int, default=160, help="cut each message to this many characters")
    watch.add_argument("--full", action="store_true", help="print whole messages")
    watch.add_argument("--timeout-s", type=float, default=5.0, help="connect timeout")

    cli_config.add_config_parser(sub)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": _run_up,
    "gpus": _run_gpus,
    "plan": _run_plan,
    "cdi-spec": _run_cdi_spec,
    "watch": _run_watch,
    "keys": _run_keys,
    "nats-init": _run_nats_init,
    "nats-config": _run_nats_config,
    "compose-env": _run_compose_env,
    "probe": _run_probe,
    "config": cli_config.run_config,
    "audit": cli_config.run_audit,
    "completion": _run_completion,
    **{name: functools.partial(_run_service, name) for name in SERVICE_FLAGS},
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that left (`| head`) shows here, where BrokenPipeError is handled
        return code
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            print(f"gpuplane: invalid setting {field} (GPUPLANE_{field.upper()}): {err['msg']}", file=sys.stderr)
        return 2
    except ServiceCrashed as exc:
        print(f"gpuplane: {exc}", file=sys.stderr)
        return 1
    except cli_config.ApiError as exc:
        print(f"gpuplane: {exc}", file=sys.stderr)
        return exc.exit_code
    except GpuplaneError as exc:
        print(f"gpuplane: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gpuplane plan ... | head`
        # Point the stdout descriptor at /dev/null: the interpreter's flush at exit would fail again otherwise.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


if __name__ == "__main__":
    sys.exit(main())
