"""Retention: a per-feed override (``feeds.retention``), the tombstones of pruned articles, and
an index on ``articles.duplicate_of`` (copies only), without which deleting an article (its
copies' foreign key is set NULL) scans the whole table.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("feeds", sa.Column("retention", sa.Integer(), nullable=True))
    op.create_table(
        "article_tombstones",
        sa.Column("feed_id", BigId, nullable=False),
        sa.Column("entry_key", sa.Text(), nullable=False),
        sa.Column("item_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_listed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["feed_id"], ["feeds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("feed_id", "entry_key"),
    )
    op.create_index("ix_article_tombstones_fingerprint", "article_tombstones", ["feed_id", "item_fingerprint"])
    op.create_index("ix_article_tombstones_listed", "article_tombstones", ["last_listed_at"])
    op.create_index("ix_articles_duplicate_of", "articles", ["duplicate_of"],
                    sqlite_where=sa.text("duplicate_of IS NOT NULL"), postgresql_where=sa.text("duplicate_of IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_articles_duplicate_of", table_name="articles")
    op.drop_table("article_tombstones")
    op.drop_column("feeds", "retention")
