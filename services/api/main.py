"""API gateway process: uvicorn serving the app factory."""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.errors import ServiceCrashed
from shared.telemetry import setup_logging, setup_tracing


def _after_shutdown(signum: int, frame: FrameType | None) -> None:
    """uvicorn has already shut down gracefully when this runs."""


def main(settings: ApiSettings) -> None:
    setup_logging("api", settings.log_level, settings.log_json)
    setup_tracing("api", settings.otlp_endpoint)
    # uvicorn owns SIGINT/SIGTERM here and runs the app's lifespan shutdown (drain) on them.
    app = create_app(settings)
    # After a graceful shutdown uvicorn re-raises the signal it handled into the handler it
    # found at start; with Python's default the process would die "killed by SIGTERM" (143)
    # although it drained cleanly. A no-op there makes a clean stop exit 0, like every service.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _after_shutdown)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        # uvloop and httptools where they installed (pyproject lists both): the C event loop and parser.
        loop="auto",
        http="auto",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
    )
    if app.state.crashed:
        raise ServiceCrashed(app.state.crashed)
