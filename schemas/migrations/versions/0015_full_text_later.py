"""Full text later: ``articles.page_due_at``, set while an article that went on with its summary
still wants its linked page, with a partial index for the periodic look for due pages.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

PAGE_WANTED = sa.text("page_due_at IS NOT NULL")


def upgrade() -> None:
    op.add_column("articles", sa.Column("page_due_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_articles_page_due", "articles", ["page_due_at"],
                    sqlite_where=PAGE_WANTED, postgresql_where=PAGE_WANTED)


def downgrade() -> None:
    op.drop_index("ix_articles_page_due", table_name="articles")
    op.drop_column("articles", "page_due_at")
