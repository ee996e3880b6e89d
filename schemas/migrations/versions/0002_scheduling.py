"""Scheduling, politeness and WebSub: feed schedule columns, host slots, push polls.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONValue = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("feeds") as batch:
        batch.add_column(sa.Column("status_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("next_poll_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("interval_override", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("schedule_hints", JSONValue, nullable=True))
        batch.add_column(sa.Column("redirect_target", sa.Text(), nullable=True))
        batch.add_column(sa.Column("redirect_count", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("websub_wanted", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("websub_hub", sa.Text(), nullable=True))
        batch.add_column(sa.Column("websub_topic", sa.Text(), nullable=True))
        batch.add_column(sa.Column("websub_secret", sa.Text(), nullable=True))
        batch.add_column(sa.Column("websub_state", sa.String(16), nullable=False, server_default="none"))
        batch.add_column(sa.Column("websub_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("websub_requested_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("polls") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False, server_default="poll"))
        batch.add_column(sa.Column("cache_headers", JSONValue, nullable=True))
    with op.batch_alter_table("articles") as batch:
        batch.create_index("ix_articles_feed_published", ["feed_id", "published_at"])
    op.create_table(
        "hosts",
        sa.Column("host", sa.Text(), primary_key=True),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "host_fetches",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("poll_id", BigId, nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_host_fetches_host", "host_fetches", ["host"])


def downgrade() -> None:
    op.drop_index("ix_host_fetches_host", "host_fetches")
    op.drop_table("host_fetches")
    op.drop_table("hosts")
    with op.batch_alter_table("articles") as batch:
        batch.drop_index("ix_articles_feed_published")
    with op.batch_alter_table("polls") as batch:
        batch.drop_column("cache_headers")
        batch.drop_column("kind")
    with op.batch_alter_table("feeds") as batch:
        for column in (
            "websub_requested_at", "websub_expires_at", "websub_state", "websub_secret", "websub_topic", "websub_hub",
            "websub_wanted", "redirect_count", "redirect_target", "schedule_hints",
            "interval_override", "next_poll_reason", "status_reason",
        ):
            batch.drop_column(column)
