"""The LSH band index keeps only its primary key: no foreign key, no index on article_id.

On PostgreSQL the foreign key's per-row trigger doubled the cost of dedupe's band
INSERT and the index on article_id doubled it again (docs/dedupe.md). Without them,
an article's band rows are deleted by primary key, from the band keys its stored
signatures give (``tasks.dedupe.delete_index_rows``): by dedupe when the article is
revised, and by ``feedmill feeds remove`` before its articles go.

On SQLite the table is rebuilt (it cannot drop a foreign key), still WITHOUT ROWID.
The downgrade restores both; band rows whose article is gone are dropped first, as
the foreign key would not allow them.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: PostgreSQL's name for the foreign key 0004 created.
FOREIGN_KEY = "minhash_bands_article_id_fkey"
INDEX = "ix_minhash_bands_article_id"


def _rebuild_sqlite_bands(with_foreign_key: bool) -> None:
    columns: list = [
        sa.Column("band_key", sa.BigInteger(), nullable=False),
        sa.Column("article_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("band_key", "article_id"),
    ]
    if with_foreign_key:
        columns.append(sa.ForeignKeyConstraint(["article_id"], ["articles.id"], ondelete="CASCADE"))
    op.create_table("minhash_bands_rebuilt", *columns, sqlite_with_rowid=False)
    # In key order: SQLite would otherwise read the smaller index on article_id and insert at
    # random places (100,000 articles: 22 s instead of 1.3 s).
    op.execute("INSERT INTO minhash_bands_rebuilt (band_key, article_id) "
               "SELECT band_key, article_id FROM minhash_bands ORDER BY band_key, article_id")
    if not with_foreign_key:
        op.drop_index(INDEX, table_name="minhash_bands")
    op.drop_table("minhash_bands")
    op.rename_table("minhash_bands_rebuilt", "minhash_bands")
    if with_foreign_key:
        op.create_index(INDEX, "minhash_bands", ["article_id"])


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_bands(with_foreign_key=False)
        return
    op.drop_index(INDEX, table_name="minhash_bands")
    for foreign_key in sa.inspect(op.get_bind()).get_foreign_keys("minhash_bands"):
        op.drop_constraint(foreign_key["name"], "minhash_bands", type_="foreignkey")


def downgrade() -> None:
    # Without the foreign key a feed removal racing a dedupe batch can leave band rows of
    # deleted articles; the foreign key would refuse them.
    op.execute("DELETE FROM minhash_bands WHERE NOT EXISTS "
               "(SELECT 1 FROM articles WHERE articles.id = minhash_bands.article_id)")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_bands(with_foreign_key=True)
        return
    op.create_foreign_key(FOREIGN_KEY, "minhash_bands", "articles", ["article_id"], ["id"], ondelete="CASCADE")
    op.create_index(INDEX, "minhash_bands", ["article_id"])
