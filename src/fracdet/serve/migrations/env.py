"""Alembic environment: run with the connection :func:`fracdet.serve.records.upgrade` passes in
``config.attributes["connection"]`` (no alembic.ini, no logging set-up); online mode only."""

from alembic import context
from sqlalchemy import create_engine

from fracdet.serve.records import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # `alembic` run by hand with sqlalchemy.url set
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("fracdet's record migrations run online only")
run_migrations_online()
