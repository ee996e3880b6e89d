"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from schemas.db import MIGRATIONS_DIR, get_engine, migrate, normalize_url, session_scope
from schemas.models import OK, Article, Base, MinhashBand
from schemas.settings import Settings
from tests.conftest import add_feed


def test_migrated_schema_matches_the_models(settings: Settings) -> None:
    migrate(settings)
    with get_engine(settings.database_url).connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def _bands_table_sql(settings: Settings) -> str:
    with session_scope(settings) as session:
        return session.scalar(text("SELECT sql FROM sqlite_master WHERE name = 'minhash_bands'"))


def test_sqlite_band_index_is_one_btree_and_migration_0007_round_trips(sqlite_settings: Settings) -> None:
    """Migration 0007 rebuilds the band table WITHOUT ROWID, keeping its rows, and back."""
    feed_id = add_feed(sqlite_settings, "https://e.org/feed")
    with session_scope(sqlite_settings) as session:
        article = Article(feed_id=feed_id, entry_key="k", raw_hash="-", stage="done", status=OK)
        session.add(article)
        session.flush()
        session.add_all(MinhashBand(band_key=key, article_id=article.id) for key in (-5, 3, 2**62))
    assert "WITHOUT ROWID" in _bands_table_sql(sqlite_settings)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(sqlite_settings.database_url))
    command.downgrade(config, "0004")
    assert "WITHOUT ROWID" not in _bands_table_sql(sqlite_settings)
    command.upgrade(config, "heads")
    assert "WITHOUT ROWID" in _bands_table_sql(sqlite_settings)
    with session_scope(sqlite_settings) as session:
        assert sorted(session.scalars(select(MinhashBand.band_key))) == [-5, 3, 2**62]


def _alembic(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(settings.database_url))
    return config


def _bands_constraints(settings: Settings) -> tuple[list, list, list]:
    """The band table's foreign keys, indexes and primary key columns."""
    # A fresh connection: SQLite answers PRAGMA foreign_key_list from a connection's
    # schema as last loaded, and another connection ran the migration.
    get_engine(settings.database_url).dispose()
    with get_engine(settings.database_url).connect() as connection:
        inspector = inspect(connection)
        return (
            [(fk["referred_table"], fk["constrained_columns"]) for fk in inspector.get_foreign_keys("minhash_bands")],
            [index["name"] for index in inspector.get_indexes("minhash_bands")],
            inspector.get_pk_constraint("minhash_bands")["constrained_columns"],
        )


def test_migration_0008_drops_the_band_foreign_key_and_index_and_round_trips(settings: Settings) -> None:
    """The band index keeps only its primary key; down and up again, its rows survive.

    Downgrading restores the foreign key, so band rows of deleted articles go first."""
    feed_id = add_feed(settings, "https://e.org/feed")
    with session_scope(settings) as session:
        article = Article(feed_id=feed_id, entry_key="k", raw_hash="-", stage="done", status=OK)
        session.add(article)
        session.flush()
        kept = sorted((key, article.id) for key in (-5, 3, 2**62))
        session.add_all(MinhashBand(band_key=key, article_id=article_id) for key, article_id in kept)
        session.add(MinhashBand(band_key=7, article_id=article.id + 1000))  # its article is gone
    assert _bands_constraints(settings) == ([], [], ["band_key", "article_id"])

    def stored() -> list[tuple[int, int]]:
        with session_scope(settings) as session:
            return sorted(tuple(row) for row in session.execute(select(MinhashBand.band_key, MinhashBand.article_id)))

    command.downgrade(_alembic(settings), "0007")
    assert _bands_constraints(settings) == (
        [("articles", ["article_id"])], ["ix_minhash_bands_article_id"], ["band_key", "article_id"]
    )
    assert stored() == kept
    if settings.database_url.startswith("sqlite"):
        assert "WITHOUT ROWID" in _bands_table_sql(settings)
    command.upgrade(_alembic(settings), "heads")
    assert _bands_constraints(settings) == ([], [], ["band_key", "article_id"])
    assert stored() == kept
    if settings.database_url.startswith("sqlite"):
        assert "WITHOUT ROWID" in _bands_table_sql(settings)
    with get_engine(settings.database_url).connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
