"""Alembic environment: runs only inside ``AccessStore.migrate``, on the connection it hands over."""

from __future__ import annotations

from alembic import context

from services.api.migrations import VERSION_TABLE


def run_migrations() -> None:
    """Migrate on the caller's connection; its open transaction (and advisory lock) covers everything."""
    context.configure(connection=context.config.attributes["connection"], version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
