from __future__ import annotations

import pytest

from services.stack.embedded import free_port
from shared.database import DatabaseUnavailable, make_engine, normalize_url, ping, redact
from shared.errors import ConfigError
from tests.realdeps import Postgres


@pytest.mark.parametrize(
    "url,expected",
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_urls_are_pinned_to_psycopg3(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
def test_other_databases_are_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="GPUPLANE_DATABASE_URL"):
        normalize_url(url)


def test_redact_hides_the_password() -> None:
    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


@pytest.mark.integration
def test_ping_real_postgres(postgres: Postgres) -> None:
    engine = make_engine(postgres.url)
    try:
        assert ping(engine).startswith("18")
    finally:
        engine.dispose()


@pytest.mark.integration
def test_ping_nothing_listening_is_typed() -> None:
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/gpuplane", connect_timeout_s=2)
    with pytest.raises(DatabaseUnavailable, match="database unreachable"):
        ping(engine)
