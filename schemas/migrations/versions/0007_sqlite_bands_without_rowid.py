"""SQLite: keep the LSH band index in one B-tree (WITHOUT ROWID).

A rowid table with a composite primary key is two B-trees, the rows by rowid
and the key index, and every batch of band keys dirties pages of both. As one
clustered B-tree the index costs half the pages, which keeps the per-article
dedupe time flat as the store grows (docs/dedupe.md). PostgreSQL is unchanged.

Revision ID: 0007
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None


def _rebuild_bands(with_rowid: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.create_table(
        "minhash_bands_rebuilt",
        sa.Column("band_key", sa.BigInteger(), nullable=False),
        sa.Column("article_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["article_id"], ["articles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("band_key", "article_id"),
        sqlite_with_rowid=with_rowid,
    )
    op.execute("INSERT INTO minhash_bands_rebuilt (band_key, article_id) SELECT band_key, article_id FROM minhash_bands")
    op.drop_index("ix_minhash_bands_article_id", table_name="minhash_bands")
    op.drop_table("minhash_bands")
    op.rename_table("minhash_bands_rebuilt", "minhash_bands")
    op.create_index("ix_minhash_bands_article_id", "minhash_bands", ["article_id"])


def upgrade() -> None:
    _rebuild_bands(with_rowid=False)


def downgrade() -> None:
    _rebuild_bands(with_rowid=True)
