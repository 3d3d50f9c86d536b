"""Orchestrator runs, at most one of them active.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orchestrator_runs",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("document", postgresql.JSONB(), nullable=False),
        sa.Column("target_override", sa.Text(), nullable=True),
        sa.Column("previous_override", sa.Text(), nullable=True),
    )
    op.create_index("orchestrator_runs_created_at", "orchestrator_runs", ["created_at"])
    # Every active row indexes the same constant, so a second one is a unique violation: the
    # database, not the callers, guarantees at most one run in progress.
    op.create_index(
        "orchestrator_runs_one_active",
        "orchestrator_runs",
        [sa.text("(true)")],
        unique=True,
        postgresql_where=sa.text("state IN ('queued', 'running', 'rolling_back')"),
    )


def downgrade() -> None:
    op.drop_table("orchestrator_runs")
