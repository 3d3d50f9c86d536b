"""Alembic migrations of the planner's tables, run programmatically by ``ConfigStore.migrate``."""

VERSION_TABLE = "planner_alembic_version"
"""Alembic's bookkeeping table, named for the planner so that other services can migrate beside it."""
