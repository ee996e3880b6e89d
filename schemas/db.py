"""Engine, sessions and migrations for SQLite (embedded) and PostgreSQL.

One engine per process and URL. SQLite runs in WAL mode with a long busy
timeout so several worker processes can share the embedded database.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from schemas.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Execution option of a read-only transaction (``session_scope(read_only=True)``).
READ_ONLY = "feedmill_read_only"


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs, the driver feedmill ships."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def redact_url(url: str) -> str:
    """A URL fit for logs and status output: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


@cache
def get_engine(url: str) -> Engine:
    url = normalize_url(url)
    sqlite_path = _sqlite_path(url)
    if sqlite_path is not None:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, decide when transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Take the write lock up front: no deadlock-prone lock upgrades. A read-only
            # transaction needs no lock: in WAL mode it reads a snapshot beside the writer.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


@cache
def _session_factory(url: str, read_only: bool) -> sessionmaker[Session]:
    engine = get_engine(url)
    return sessionmaker(engine.execution_options(**{READ_ONLY: True}) if read_only else engine, expire_on_commit=False)


@contextlib.contextmanager
def session_scope(settings: Settings, *, read_only: bool = False) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error.

    ``read_only`` is for transactions that only read, such as progress checks that run while
    workers write: on SQLite they then neither take nor wait for the write lock.
    """
    session = _session_factory(settings.database_url, read_only)()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def relaxed_commit(session: Session) -> None:
    """On PostgreSQL, let this transaction's COMMIT return without waiting for its WAL flush.

    Only for transactions whose loss in a database crash (the last fraction of a second before
    it; never a partial transaction) is repaired by redoing the work, such as a fetch: a flush
    costs about 5 ms here, a 304 commits twice. SQLite (WAL, synchronous=NORMAL) never waits.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit = off"))


def insert_for(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which offers ``on_conflict_do_nothing``/``do_update``."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def migrate(settings: Settings) -> None:
    """Upgrade the database to the newest schema; safe to call at every start.

    Concurrent callers are serialised: a file lock beside an SQLite database,
    an advisory lock on PostgreSQL (taken in the migrations' env.py).
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(settings.database_url))
    sqlite_path = _sqlite_path(normalize_url(settings.database_url))
    if sqlite_path is None:
        command.upgrade(config, "heads")
        return
    sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    with open(sqlite_path.with_name(sqlite_path.name + ".migrate-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        command.upgrade(config, "heads")
