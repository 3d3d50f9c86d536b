"""PostgreSQL engine factory (SQLAlchemy 2 over psycopg 3)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

from shared.errors import ConfigError, GpuplaneError

log = logging.getLogger(__name__)


class DatabaseUnavailable(GpuplaneError):
    """The database did not answer (or refused). The message says what failed in words fit for any client;
    ``detail`` keeps the driver's text (addresses, ports, server messages) for the log only."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


def unavailable(what: str, exc: Exception) -> DatabaseUnavailable:
    """``DatabaseUnavailable`` for a driver error: what failed and a plain reason; the driver's text as detail."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig)
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        reason = "refused gpuplane's credentials"
    elif isinstance(exc, OperationalError) or "connection" in lowered or "timeout" in lowered:
        reason = "is not answering"
    else:
        reason = "failed (the service's log has the database's message)"
    return DatabaseUnavailable(f"{what}: the database {reason}", detail=f"{type(orig).__name__}: {text.strip()}")


def normalize_url(url: str) -> str:
    """Accept the usual ``postgresql://`` / ``postgres://`` forms and pin the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"GPUPLANE_DATABASE_URL is not a database URL: {url!r}") from exc
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigError(f"GPUPLANE_DATABASE_URL must point at PostgreSQL, got {parsed.get_backend_name()!r}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL as the user wrote it, with its password hidden, for logs and banners."""
    normalize_url(url)
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str, *, connect_timeout_s: int = 5, pool_size: int = 5) -> Engine:
    """An engine that checks connections before use, so a restarted database is survived."""
    return create_engine(
        normalize_url(url),
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"connect_timeout": connect_timeout_s, "application_name": "gpuplane"},
    )


def ping(engine: Engine) -> str:
    """Return the server version, or raise ``DatabaseUnavailable`` with the driver's reason."""
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())
    except DBAPIError as exc:
        raise unavailable("database unreachable", exc) from exc
    except SQLAlchemyError as exc:
        raise unavailable("database unreachable", exc) from exc


_ALEMBIC = threading.Lock()
"""Alembic keeps the migration it is running in module globals, so two at once in one process (the
planner's and the orchestrator's, in a test or an embedding) would trample each other."""


def upgrade(engine: Engine, script_location: Path, lock_key: int, what: str) -> None:
    """Run ``script_location``'s migrations to head, one process at a time (``pg_advisory_xact_lock(lock_key)``).

    Raises ``DatabaseUnavailable`` when the database does not answer, ``ConfigError`` when the
    migrations cannot run (a database from a newer gpuplane, say).
    """
    config = Config()
    config.set_main_option("script_location", str(script_location))
    try:
        with _ALEMBIC, engine.begin() as conn:
            advisory_lock(conn, lock_key)
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except DBAPIError as exc:
        raise unavailable(f"cannot migrate {what}", exc) from exc
    except CommandError as exc:
        raise ConfigError(f"cannot migrate {what}: {exc}") from exc


@contextmanager
def database_errors(action: str) -> Iterator[None]:
    """Turn the driver's errors into ``DatabaseUnavailable`` that says what failed and why."""
    try:
        yield
    except DBAPIError as exc:
        raise unavailable(f"cannot {action}", exc) from exc


def advisory_lock(conn: Connection, key: int) -> None:
    """Hold ``pg_advisory_xact_lock(key)`` until the transaction ends (one writer at a time across processes)."""
    conn.execute(select(func.pg_advisory_xact_lock(key)))


async def until_available(
    step: Callable[[], None], *, what: str, retry_s: float, on_problem: Callable[[str | None], None]
) -> None:
    """Run the blocking ``step`` (migrations, say) in a thread until the database lets it finish.

    ``on_problem`` hears each reason it could not (for health replies), then None once it did.
    """
    while True:
        try:
            await asyncio.to_thread(step)
        except DatabaseUnavailable as exc:
            on_problem(str(exc))
            log.warning("%s not ready (%s; %s); retrying in %.1f s", what, exc, exc.detail, retry_s)
            await asyncio.sleep(retry_s)
        else:
            on_problem(None)
            return
