"""GPU configuration, detected devices, system settings and configuration history.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _uuid_pk() -> sa.Column[Any]:
    return sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.text("gen_random_uuid()"))


def _timestamp(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()"))


def upgrade() -> None:
    op.create_table(
        "gpu_configurations",
        _uuid_pk(),
        sa.Column("service_name", sa.String(128), nullable=False, unique=True),
        sa.Column("gpu_index", sa.Integer(), nullable=True),
        sa.Column("gpu_indices", postgresql.ARRAY(sa.Integer()), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("gpu_uuids", postgresql.ARRAY(sa.Text()), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("strategy", sa.String(32), nullable=False, server_default="manual"),
        sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("model", sa.Text(), nullable=False, server_default=""),
        sa.Column("vram_estimate_gb", sa.Double(), nullable=False),
        sa.Column("vram_budget_gb", sa.Double(), nullable=True),
        sa.Column("vram_budget_override", sa.Double(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        _timestamp("created_at"),
        _timestamp("updated_at"),
    )
    op.create_table(
        "gpu_devices",
        _uuid_pk(),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(96)),
        sa.Column("name", sa.String(128)),
        sa.Column("vram_total_mb", sa.Integer()),
        sa.Column("vram_available_mb", sa.Integer()),
        sa.Column("compute_capability", sa.String(16)),
        sa.Column("healthy", sa.Boolean()),
        sa.Column("health_reason", sa.Text()),
        sa.Column("source", sa.String(16)),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("host", "gpu_index"),
    )
    op.create_table(
        "system_settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", postgresql.JSONB(), nullable=False),
        _timestamp("updated_at"),
    )
    op.create_table(
        "gpu_config_history",
        sa.Column("revision", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("strategy", sa.String(32), nullable=False),
        sa.Column("assignments", postgresql.JSONB(), nullable=False),
        sa.Column("warnings", postgresql.JSONB(), nullable=False),
    )


def downgrade() -> None:
    for table in ("gpu_config_history", "system_settings", "gpu_devices", "gpu_configurations"):
        op.drop_table(table)
