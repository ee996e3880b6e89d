"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, func, inspect, select, text

from schemas.db import MIGRATIONS_DIR, get_engine, migrate, normalize_url, session_scope
from schemas.models import OK, Article, Base, MinhashBand, MinhashSignature
from schemas.settings import Settings
from tasks.dedupe import Shingles, fingerprint, minhash, word_hashes, words
from tasks.storage.clusters import BANDS, BANDS_BEFORE_0016, LEAD, LEAD_BANDS, band_keys
from tests.conftest import add_feed
from tests.test_dedupe import story


#: What migration 0013 makes that no model describes: SQLite's change counter and FTS5 search
#: table (with the shadow tables FTS5 keeps beside it), PostgreSQL's search vector column and its index.
UNMODELLED = ("article_change_counter", "article_search", "search_vector", "ix_articles_search")


def _modelled(name: str | None, _type: str, _parents: object) -> bool:
    return not (name or "").startswith(UNMODELLED)


def schema_diff(connection: Connection) -> list:
    """How the database's schema differs from the models'."""
    return compare_metadata(MigrationContext.configure(connection, opts={"include_name": _modelled}), Base.metadata)


def test_migrated_schema_matches_the_models(settings: Settings) -> None:
    migrate(settings)
    with get_engine(settings.database_url).connect() as connection:
        assert schema_diff(connection) == []


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
    command.upgrade(config, "0008")  # 0016 rebuilds the rows from signatures, which these have none of
    assert "WITHOUT ROWID" in _bands_table_sql(sqlite_settings)
    with session_scope(sqlite_settings) as session:
        assert sorted(session.scalars(select(MinhashBand.band_key))) == [-5, 3, 2**62]
    command.upgrade(config, "heads")
    assert "WITHOUT ROWID" in _bands_table_sql(sqlite_settings)


def _alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(settings.database_url))
    return config


def _compression(settings: Settings) -> dict[str, str]:
    """pg_attribute's attcompression of the large columns: 'l' lz4, 'p' pglz, '' the server default."""
    with session_scope(settings) as session:
        rows = session.execute(text(
            "SELECT attrelid::regclass::text || '.' || attname, attcompression FROM pg_attribute "
            "WHERE attrelid IN ('articles'::regclass, 'polls'::regclass) AND attnum > 0 AND NOT attisdropped"
        )).all()
    return {column: method for column, method in rows}


LARGE_COLUMNS = {
    "articles.raw_summary_html", "articles.raw_content_html", "articles.text", "articles.html",
    "articles.summary", "polls.body",
}


def test_postgres_large_columns_use_lz4_and_migration_0009_round_trips(postgres_settings: Settings) -> None:
    """Migration 0009 sets lz4 on the large once-written columns only, and its downgrade sets pglz."""
    with session_scope(postgres_settings) as session:
        enumvals = session.scalar(text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"))
    if "lz4" not in enumvals:
        pytest.skip("this PostgreSQL server was built without lz4")
    compression = _compression(postgres_settings)
    assert {column for column, method in compression.items() if method == "l"} == LARGE_COLUMNS
    assert compression["articles.raw_title"] == compression["polls.error"] == ""  # the rest untouched
    feed_id = add_feed(postgres_settings, "https://e.org/feed")
    with session_scope(postgres_settings) as session:
        article = Article(feed_id=feed_id, entry_key="k", raw_hash="-", raw_content_html="<p>words</p>" * 2000)
        session.add(article)
        session.flush()
        article_id = article.id
    with session_scope(postgres_settings) as session:
        # The value really is stored compressed with lz4, and reads back whole.
        assert session.scalar(text("SELECT pg_column_compression(raw_content_html) FROM articles")) == "lz4"
        assert session.get(Article, article_id).raw_content_html == "<p>words</p>" * 2000
    config = _alembic_config(postgres_settings)
    command.downgrade(config, "0009@-1")  # this branch only
    compression = _compression(postgres_settings)
    assert {column for column, method in compression.items() if method == "p"} == LARGE_COLUMNS
    assert not any(method == "l" for method in compression.values())
    with session_scope(postgres_settings) as session:  # stored rows keep their compression, and still read
        assert session.get(Article, article_id).raw_content_html == "<p>words</p>" * 2000
    command.upgrade(config, "heads")
    assert {column for column, method in _compression(postgres_settings).items() if method == "l"} == LARGE_COLUMNS


def test_migration_0009_changes_nothing_on_sqlite(sqlite_settings: Settings) -> None:
    config = _alembic_config(sqlite_settings)
    with session_scope(sqlite_settings) as session:
        heads = set(session.scalars(text("SELECT version_num FROM alembic_version")))
    command.downgrade(config, "0009@-1")  # this branch only
    with session_scope(sqlite_settings) as session:
        assert set(session.scalars(text("SELECT version_num FROM alembic_version"))) == heads - {"0009"}
    command.upgrade(config, "heads")
    with get_engine(sqlite_settings.database_url).connect() as connection:
        assert schema_diff(connection) == []


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

    command.downgrade(_alembic_config(settings), "0007")
    assert _bands_constraints(settings) == (
        [("articles", ["article_id"])], ["ix_minhash_bands_article_id"], ["band_key", "article_id"]
    )
    assert stored() == kept
    if settings.database_url.startswith("sqlite"):
        assert "WITHOUT ROWID" in _bands_table_sql(settings)
    command.upgrade(_alembic_config(settings), "0008")  # 0016 rebuilds the rows from signatures
    assert _bands_constraints(settings) == ([], [], ["band_key", "article_id"])
    assert stored() == kept
    if settings.database_url.startswith("sqlite"):
        assert "WITHOUT ROWID" in _bands_table_sql(settings)
    command.upgrade(_alembic_config(settings), "heads")
    with get_engine(settings.database_url).connect() as connection:
        assert schema_diff(connection) == []


def test_migration_0016_rebuilds_the_band_index_from_the_signatures_it_keeps(settings: Settings) -> None:
    """Articles indexed by the old layout (42 bands of 2-word and of 3-word shingles, 20 of the
    lead) come out with exactly the rows the code writes today, and no 3-word signature; so does
    one deduped before issue 24, with a 3-word signature alone (fingerprinted again from its text)."""
    feed_id = add_feed(settings, "https://e.org/feed")
    texts = [story(300, seed=seed) for seed in range(4)]
    with session_scope(settings) as session:
        articles = [Article(feed_id=feed_id, entry_key=f"k{n}", raw_hash="-", stage="done", status=OK, text=text)
                    for n, text in enumerate(texts)]
        session.add_all(articles)
        session.flush()
        old_layout = {article.id: {**fingerprint(text).signatures, 3: minhash(Shingles.of(word_hashes(words(text))).sequence)}
                      for article, text in zip(articles, texts)}
        before_issue_24 = articles[-1].id
        old_layout[before_issue_24] = {3: old_layout[before_issue_24][3]}
    command.downgrade(_alembic_config(settings), "0008")
    with session_scope(settings) as session:
        session.add_all(MinhashSignature(article_id=article_id, shingle_words=kind, signature=signature.tobytes())
                        for article_id, by_kind in old_layout.items() for kind, signature in by_kind.items())
        session.add_all(
            MinhashBand(band_key=key, article_id=article_id)
            for article_id, by_kind in old_layout.items() for kind, signature in by_kind.items()
            for key in band_keys(signature, kind, BANDS_BEFORE_0016 if kind != LEAD else None)
        )
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(MinhashBand)) == 3 * (42 + 42 + 20) + 42
    command.upgrade(_alembic_config(settings), "heads")
    with session_scope(settings) as session:
        bands = set(session.execute(select(MinhashBand.band_key, MinhashBand.article_id)))
        kinds = set(session.execute(select(MinhashSignature.article_id, MinhashSignature.shingle_words)))
    assert bands == {(key, article_id) for article_id, text in zip(old_layout, texts)
                     for key in fingerprint(text).band_keys}
    assert len(bands) == 4 * (BANDS + LEAD_BANDS) == 4 * (32 + 20)
    assert kinds == {(article_id, kind) for article_id in old_layout for kind in (2, LEAD)}
