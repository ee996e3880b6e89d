"""PostgreSQL: compress the large once-written columns with lz4 instead of pglz.

An article's raw and clean HTML and text, and a poll's fetched body, are
written once (or once per revision) and are each several kilobytes: with the
default pglz TOAST compression, compressing them was most of the cost of the
parse stage's INSERT and of the fetch stage's UPDATE of the body. lz4
compresses several times faster (and decompresses faster when the parse stage
reads the body back) at a similar ratio. Only new values are compressed with
lz4: stored rows keep pglz until they are rewritten; both are read alike.

Applied only when the server was built with lz4 (``default_toast_compression``
offers it); otherwise, and on SQLite, nothing changes. The downgrade sets pglz
again.

Revision ID: 0009
Revises: 0001
"""

from alembic import op
from sqlalchemy import text

revision = "0009"
down_revision = "0001"
branch_labels = None
depends_on = None

#: The columns, per table, whose values are large and written once per article or poll.
LARGE_COLUMNS = {
    "articles": ("raw_summary_html", "raw_content_html", "text", "html", "summary"),
    "polls": ("body",),
}


def lz4_supported() -> bool:
    """Whether this PostgreSQL server can compress with lz4 (built ``--with-lz4``)."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    enumvals = bind.execute(
        text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    return bool(enumvals) and "lz4" in enumvals


def _set_compression(method: str) -> None:
    for table, columns in LARGE_COLUMNS.items():
        # Only catalog changes: no row is rewritten, so this is quick on a large table.
        op.execute(f"ALTER TABLE {table} " + ", ".join(f"ALTER COLUMN {c} SET COMPRESSION {method}" for c in columns))


def upgrade() -> None:
    if lz4_supported():
        _set_compression("lz4")


def downgrade() -> None:
    if lz4_supported():
        _set_compression("pglz")
