"""Failures: the dead-letter record of work that exhausted its retries or failed for good.

Revision ID: 0006
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONValue = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "failures",
        sa.Column("id", BigId, nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("article_ids", JSONValue, nullable=True),
        sa.Column("poll_id", BigId, nullable=True),
        sa.Column("feed_id", BigId, nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requeued_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_failures_open", "failures", ["stage", "subject", "requeued_at"])


def downgrade() -> None:
    op.drop_index("ix_failures_open", table_name="failures")
    op.drop_table("failures")
