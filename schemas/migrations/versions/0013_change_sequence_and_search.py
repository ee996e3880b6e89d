"""The read API: ``articles.change_seq`` (the change sequence a cursor follows) and full-text search.

``change_seq`` is a new value every time a writer changes an article (``tasks/storage/changes.py``):
PostgreSQL draws it from the sequence ``article_change_seq``, SQLite from the one-row table
``article_change_counter``. Articles stored before this share value 1 (a cursor orders ties by id).

Search: on PostgreSQL the column ``articles.search_vector`` with a GIN index, kept by a trigger
as ``article_search_vector(language, title, text)``, an immutable SQL function (the article's
language picks the text search configuration, ``simple`` where it is unknown); it is matched by
``article_search_query(q)``, the query parsed in every one of those configurations. No model
describes the column: the ORM never reads it. On SQLite an FTS5 table ``article_search`` with ``articles`` as its external
content, kept in step by triggers (a later migration that rebuilds ``articles`` must recreate them).

Revision ID: 0013
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0011"
branch_labels = None
depends_on = None

#: Article language (py3langid's ISO 639-1 code) -> PostgreSQL text search configuration.
CONFIGS = {
    "da": "danish", "de": "german", "en": "english", "es": "spanish", "fi": "finnish", "fr": "french",
    "hu": "hungarian", "it": "italian", "nb": "norwegian", "nl": "dutch", "no": "norwegian",
    "pt": "portuguese", "ro": "romanian", "ru": "russian", "sv": "swedish", "tr": "turkish",
}


def _postgresql_upgrade() -> None:
    op.execute("CREATE SEQUENCE article_change_seq AS bigint")
    op.execute("SELECT setval('article_change_seq', 1)")
    op.execute("UPDATE articles SET change_seq = 1")
    cases = " ".join(f"WHEN '{code}' THEN '{config}'::regconfig" for code, config in CONFIGS.items())
    op.execute(
        "CREATE FUNCTION article_search_vector(language text, title text, body text) RETURNS tsvector "
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT to_tsvector("
        f"CASE language {cases} ELSE 'simple'::regconfig END, coalesce(title, '') || ' ' || coalesce(body, '')) $$"
    )
    # The distinct parses OR-ed: most configurations parse a word alike, and ranking costs per query item.
    configs = ", ".join(f"'{config}'" for config in ["simple", *sorted(set(CONFIGS.values()))])
    op.execute(
        "CREATE FUNCTION article_search_query(q text) RETURNS tsquery LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ "
        "SELECT coalesce(string_agg(DISTINCT '(' || parsed::text || ')', ' | ')::tsquery, ''::tsquery) "
        f"FROM unnest(ARRAY[{configs}]::regconfig[]) AS config, websearch_to_tsquery(config, q) AS parsed "
        "WHERE parsed::text <> '' $$"
    )
    # A stored vector, not an expression index: ranking reads it instead of parsing every match's text again.
    # Kept by a trigger that fires only when language, title or text is written (not on every stage's update).
    op.execute("ALTER TABLE articles ADD COLUMN search_vector tsvector")
    op.execute(
        "CREATE FUNCTION article_search_vector_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "NEW.search_vector := article_search_vector(NEW.language, NEW.title, NEW.text); RETURN NEW; END $$"
    )
    op.execute(
        "CREATE TRIGGER article_search_vector BEFORE INSERT OR UPDATE OF language, title, text ON articles "
        "FOR EACH ROW EXECUTE FUNCTION article_search_vector_update()"
    )
    op.execute("UPDATE articles SET search_vector = article_search_vector(language, title, text)")
    op.execute("CREATE INDEX ix_articles_search ON articles USING gin (search_vector)")


def _sqlite_upgrade() -> None:
    op.execute("CREATE TABLE article_change_counter (id INTEGER PRIMARY KEY CHECK (id = 1), last_seq INTEGER NOT NULL)")
    op.execute("INSERT INTO article_change_counter (id, last_seq) VALUES (1, 1)")
    op.execute("UPDATE articles SET change_seq = 1")
    op.execute(
        "CREATE VIRTUAL TABLE article_search USING fts5(title, text, content='articles', content_rowid='id', "
        "tokenize='unicode61 remove_diacritics 2')"
    )
    op.execute("INSERT INTO article_search (article_search) VALUES ('rebuild')")
    op.execute(
        "CREATE TRIGGER article_search_insert AFTER INSERT ON articles BEGIN "
        "INSERT INTO article_search (rowid, title, text) VALUES (new.id, new.title, new.text); END"
    )
    op.execute(
        "CREATE TRIGGER article_search_delete AFTER DELETE ON articles BEGIN "
        "INSERT INTO article_search (article_search, rowid, title, text) VALUES ('delete', old.id, old.title, old.text); END"
    )
    op.execute(
        "CREATE TRIGGER article_search_update AFTER UPDATE OF title, text ON articles BEGIN "
        "INSERT INTO article_search (article_search, rowid, title, text) VALUES ('delete', old.id, old.title, old.text); "
        "INSERT INTO article_search (rowid, title, text) VALUES (new.id, new.title, new.text); END"
    )


def upgrade() -> None:
    op.add_column("articles", sa.Column("change_seq", sa.BigInteger(), nullable=True))
    op.create_index("ix_articles_change_seq", "articles", ["change_seq", "id"])
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_upgrade()
    else:
        _sqlite_upgrade()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_articles_search")
        op.execute("DROP TRIGGER article_search_vector ON articles")
        op.execute("DROP FUNCTION article_search_vector_update()")
        op.execute("ALTER TABLE articles DROP COLUMN search_vector")
        op.execute("DROP FUNCTION article_search_query(text)")
        op.execute("DROP FUNCTION article_search_vector(text, text, text)")
        op.execute("DROP SEQUENCE article_change_seq")
    else:
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS article_search_{trigger}")  # gone if articles was rebuilt
        op.execute("DROP TABLE article_search")
        op.execute("DROP TABLE article_change_counter")
    op.drop_index("ix_articles_change_seq", table_name="articles")
    op.drop_column("articles", "change_seq")
