"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import select, text

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
