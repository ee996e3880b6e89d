"""Classify: trained topic models, operators' rules, article tags and drop tombstones.

Revision ID: 0003
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONValue = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "classifier_models",
        sa.Column("id", BigId, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("labels", JSONValue, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("metrics", JSONValue, nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_classifier_models_active",
        "classifier_models",
        ["active"],
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    )
    op.create_table(
        "rules",
        sa.Column("id", BigId, nullable=False),
        sa.Column("feed_id", BigId, nullable=True),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("tag", sa.Text(), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("pattern", sa.Text(), nullable=False),
        sa.Column("fields", JSONValue, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["feed_id"], ["feeds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rules_feed_id", "rules", ["feed_id"])
    with op.batch_alter_table("articles") as batch_op:
        batch_op.add_column(sa.Column("raw_tags", JSONValue, nullable=True))
        batch_op.add_column(sa.Column("tags", JSONValue, nullable=True))
        batch_op.add_column(sa.Column("classifier_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("dropped_by", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("articles") as batch_op:
        batch_op.drop_column("dropped_by")
        batch_op.drop_column("classifier_version")
        batch_op.drop_column("tags")
        batch_op.drop_column("raw_tags")
    op.drop_index("ix_rules_feed_id", table_name="rules")
    op.drop_table("rules")
    op.drop_index("ux_classifier_models_active", table_name="classifier_models")
    op.drop_table("classifier_models")
