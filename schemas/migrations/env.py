"""Alembic environment: runs feedmill's migrations on SQLite and PostgreSQL."""

from alembic import context
from sqlalchemy import create_engine, pool, text

from schemas.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
engine = create_engine(url, poolclass=pool.NullPool)

with engine.connect() as connection:
    if connection.dialect.name == "postgresql":
        # Several processes may start at once; one migrates, the others wait.
        connection.execute(text("SELECT pg_advisory_lock(727465)"))
        connection.commit()
    else:
        # A new embedded database gives the pages a prune frees back (tasks/storage/retention.reclaim_space).
        # It takes effect only before the first table: an older file keeps its mode until a VACUUM.
        connection.exec_driver_sql("PRAGMA auto_vacuum=INCREMENTAL")
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_unlock(727465)"))
        connection.commit()
engine.dispose()
