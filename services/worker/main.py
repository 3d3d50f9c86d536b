"""Worker service: one process per device; several devices (``DEVICES``) become supervised children."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from pydantic import SecretStr

from services.stack.supervisor import Backoff, ProcessSpec, Supervisor
from services.worker.service import start_for
from services.worker.settings import WorkerSettings
from shared.contracts import ServiceName
from shared.errors import ConfigError
from shared.service import run
from shared.telemetry import setup_logging

log = logging.getLogger("gpuplane.worker")

PER_DEVICE = frozenset({"device", "devices", "gpu", "worker_id", "metrics_port", "engine_port"})
"""Settings each child gets its own value of, instead of the parent's."""


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def child_specs(settings: WorkerSettings, devices: tuple[str, ...], python: str = sys.executable) -> list[ProcessSpec]:
    """One ``gpuplane worker --device D`` per device, with every setting the parent was given.

    Settings travel as ``GPUPLANE_*`` variables (flags given to the parent included); a metrics
    port and an engine port become one port per child (port, port + 1, ...).
    """
    if settings.worker_id is not None:
        raise ConfigError(
            "GPUPLANE_WORKER_ID (--worker-id) names one worker; leave it unset to serve several devices "
            "(each child is <host>-cuda<N>)"
        )
    shared_env = {
        f"GPUPLANE_{name.upper()}": _env_value(getattr(settings, name))
        for name in sorted(settings.model_fields_set - PER_DEVICE)
        if getattr(settings, name) is not None
    }
    specs: list[ProcessSpec] = []
    for i, device in enumerate(devices):
        env = dict(shared_env)
        if settings.metrics_port:
            env["GPUPLANE_METRICS_PORT"] = str(settings.metrics_port + i)
        if settings.engine_port:
            env["GPUPLANE_ENGINE_PORT"] = str(settings.engine_port + i)
        specs.append(
            ProcessSpec(
                name=f"worker-{device.replace(':', '')}",
                argv=[python, "-m", "services.cli", "worker", "--device", device],
                env=env,
                stop_timeout_s=settings.drain_timeout_s + 5.0,
            )
        )
    return specs


async def supervise(specs: list[ProcessSpec]) -> None:
    """Run the children until SIGINT/SIGTERM, then stop them all (each drains and says ``stopped``)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    supervisor = Supervisor(Backoff())
    try:
        for spec in specs:
            await supervisor.start(spec)
        log.info("running %d workers: %s", len(specs), ", ".join(spec.name for spec in specs))
        await stopping.wait()
    finally:
        await supervisor.stop_all()
    log.info("every worker stopped")


def main(settings: WorkerSettings) -> None:
    if settings.agents:
        from services.worker.agents import start_agents

        run(ServiceName.WORKER, settings, start_agents(settings))
        return
    devices = settings.device_list()
    if len(devices) == 1:
        run(ServiceName.WORKER, settings, start_for(settings))
        return
    specs = child_specs(settings, devices)
    setup_logging(ServiceName.WORKER.value, settings.log_level, settings.log_json)
    asyncio.run(supervise(specs))
