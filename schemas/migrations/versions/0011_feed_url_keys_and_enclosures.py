"""One feed per URL (``feeds.url_key``, unique), OPML folders as feed tags, article enclosures.

``url_key`` is each feed URL in its normal spelling (``tasks.links.feed_url_key``:
scheme and host in lower case, default port and fragment dropped). Feeds
added before this could be the same resource spelled twice
(``HTTP://host/f.xml`` and ``http://host/f.xml#x``). The upgrade keeps the
oldest of each such group as it is; each later one is retired, its key left
NULL (the unique index allows that) and ``status_reason`` naming the feed it
duplicates. Nothing is deleted: its articles stay, and the operator removes it
with ``feedmill feeds remove URL`` once satisfied.

Revision ID: 0011
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from tasks.links import BadFeedUrl, feed_url_key

revision = "0011"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONValue = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _key(url: str) -> str:
    try:
        return feed_url_key(url)
    except BadFeedUrl:
        return url  # never accepted by `feeds add`; keep it as its own key


def upgrade() -> None:
    op.add_column("feeds", sa.Column("url_key", sa.Text(), nullable=True))
    op.add_column("feeds", sa.Column("tags", JSONValue, nullable=True))
    op.add_column("articles", sa.Column("enclosures", JSONValue, nullable=True))
    bind = op.get_bind()
    feeds = sa.table("feeds", sa.column("id"), sa.column("url"), sa.column("url_key"),
                     sa.column("status"), sa.column("status_reason"))
    owners: dict[str, tuple[int, str]] = {}
    for feed_id, url in bind.execute(sa.select(feeds.c.id, feeds.c.url).order_by(feeds.c.id)).all():
        key = _key(url)
        if key not in owners:
            owners[key] = (feed_id, url)
            bind.execute(sa.update(feeds).where(feeds.c.id == feed_id).values(url_key=key))
            continue
        owner_id, owner_url = owners[key]
        bind.execute(sa.update(feeds).where(feeds.c.id == feed_id).values(
            status="retired",
            status_reason=f"the same feed as feed {owner_id} ({owner_url}) once its URL is normalised; "
                          "kept with its articles until `feedmill feeds remove URL`",
        ))
    op.create_index("ux_feeds_url_key", "feeds", ["url_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_feeds_url_key", table_name="feeds")
    op.drop_column("articles", "enclosures")
    op.drop_column("feeds", "tags")
    op.drop_column("feeds", "url_key")
