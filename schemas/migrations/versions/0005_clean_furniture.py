"""Clean: per-feed full-text mode, the clean note, and paragraph fingerprints for learned furniture.

Revision ID: 0005
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONValue = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("feeds") as batch:
        batch.add_column(sa.Column("full_text", sa.String(8), nullable=True))
    with op.batch_alter_table("articles") as batch:
        batch.add_column(sa.Column("clean_note", sa.Text(), nullable=True))
    op.create_table(
        "paragraph_fingerprints",
        sa.Column("article_id", BigId, nullable=False),
        sa.Column("feed_id", BigId, nullable=False),
        sa.Column("fingerprints", JSONValue, nullable=False),
        sa.ForeignKeyConstraint(["article_id"], ["articles.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["feed_id"], ["feeds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("article_id"),
    )
    op.create_index("ix_paragraph_fingerprints_feed", "paragraph_fingerprints", ["feed_id", "article_id"])


def downgrade() -> None:
    op.drop_index("ix_paragraph_fingerprints_feed", "paragraph_fingerprints")
    op.drop_table("paragraph_fingerprints")
    with op.batch_alter_table("articles") as batch:
        batch.drop_column("clean_note")
    with op.batch_alter_table("feeds") as batch:
        batch.drop_column("full_text")
