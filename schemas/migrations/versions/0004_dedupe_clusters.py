"""Dedupe: story clusters, the previous content hash, and the MinHash LSH index.

Revision ID: 0004
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("articles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cluster_id", BigId, nullable=True))
        batch_op.add_column(sa.Column("duplicate_reason", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("previous_content_hash", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_articles_cluster", ["cluster_id"], unique=False)
    # Articles deduped before clusters existed: a cluster of their first-seen copy.
    op.execute(
        "UPDATE articles SET cluster_id = COALESCE(duplicate_of, id) "
        "WHERE stage NOT IN ('clean', 'dedupe')"
    )
    op.create_table(
        "minhash_signatures",
        sa.Column("article_id", BigId, nullable=False),
        sa.Column("shingle_words", sa.Integer(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["article_id"], ["articles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("article_id", "shingle_words"),
    )
    op.create_table(
        "minhash_bands",
        sa.Column("band_key", sa.BigInteger(), nullable=False),
        sa.Column("article_id", BigId, nullable=False),
        sa.ForeignKeyConstraint(["article_id"], ["articles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("band_key", "article_id"),
    )
    with op.batch_alter_table("minhash_bands", schema=None) as batch_op:
        batch_op.create_index("ix_minhash_bands_article_id", ["article_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("minhash_bands", schema=None) as batch_op:
        batch_op.drop_index("ix_minhash_bands_article_id")
    op.drop_table("minhash_bands")
    op.drop_table("minhash_signatures")
    with op.batch_alter_table("articles", schema=None) as batch_op:
        batch_op.drop_index("ix_articles_cluster")
        batch_op.drop_column("previous_content_hash")
        batch_op.drop_column("duplicate_reason")
        batch_op.drop_column("cluster_id")
