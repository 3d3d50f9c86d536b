"""API gateway process: uvicorn serving the app factory."""

from __future__ import annotations

import uvicorn

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.errors import ServiceCrashed
from shared.telemetry import setup_logging, setup_tracing


def main(settings: ApiSettings) -> None:
    setup_logging("api", settings.log_level, settings.log_json)
    setup_tracing("api", settings.otlp_endpoint)
    # uvicorn owns SIGINT/SIGTERM here and runs the app's lifespan shutdown (drain) on them.
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
    )
    if app.state.crashed:
        raise ServiceCrashed(app.state.crashed)
