"""Alembic migrations of the gateway's tables (inference keys, audit trail), run by ``AccessStore.migrate``."""

VERSION_TABLE = "api_alembic_version"
"""Alembic's bookkeeping table, named for the gateway so that other services can migrate beside it."""
