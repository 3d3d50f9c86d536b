"""Checks every service's Alembic migrations get: the tables match the models, and a downgrade undoes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData


def drift_from_migrations(engine: Engine, metadata: MetaData, version_table: str) -> list[Any]:
    """What the migrated database and ``metadata`` disagree on (empty when they match)."""
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn, opts={"version_table": version_table}), metadata))


def downgrade_to_base(engine: Engine, store_file: str) -> None:
    """Run the migrations beside ``store_file`` (a store module's ``__file__``) down to nothing."""
    config = Config()
    config.set_main_option("script_location", str(Path(store_file).with_name("migrations")))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
