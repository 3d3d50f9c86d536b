"""Alembic migrations of the orchestrator's tables, run programmatically by ``RunStore.migrate``."""

VERSION_TABLE = "orchestrator_alembic_version"
"""Alembic's bookkeeping table, named for the orchestrator so that it migrates beside the planner's tables."""
