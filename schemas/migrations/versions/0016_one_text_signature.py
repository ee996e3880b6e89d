"""The near-duplicate index keeps one text signature: 2-word shingles, 32 bands (with the lead's 20).

Until now an article had 104 band rows: 42 of its 2-word shingle signature, 42 of a 3-word
one and 20 of its lead. The 3-word signature found no copy the 2-word one missed on
``benchmarks/dedupe_hard.py``, and the band index outgrew the cache at 100,000 stored
articles (docs/dedupe.md). A band's key does not depend on how many bands there are, so
the first 32 of an article's 2-word rows are already rows of the new layout: the index is
rebuilt from the stored signatures (``tasks.storage.clusters.band_keys``, the layout the
code writes), in key order, half its size, and the 3-word signatures are deleted.

Articles deduped before the harder copies (issue 24) have a 3-word signature alone (the 2-word
one was only for texts under 80 words then, the lead did not exist): they are fingerprinted
again from their text first, so that no article leaves the index.

The downgrade restores nothing: an older feedmill finds copies of the articles indexed here
through the rows kept, and writes its own layout for the articles it dedupes.

Revision ID: 0016
Revises: 0008
"""

import numpy as np
import sqlalchemy as sa
from alembic import op

from tasks.dedupe import fingerprint
from tasks.storage.clusters import LEAD, band_keys

revision = "0016"
down_revision = "0008"
branch_labels = None
depends_on = None

#: The 3-word shingle signature's kind (``minhash_signatures.shingle_words``), gone with this revision.
THREE_WORD_SHINGLES = 3
#: Text signature's kind, kept.
TWO_WORD_SHINGLES = 2
#: Articles whose signatures are read (and band rows written to the staging table) per round trip.
CHUNK = 2000


def upgrade() -> None:
    connection = op.get_bind()
    op.execute("CREATE TEMPORARY TABLE minhash_bands_kept (band_key BIGINT NOT NULL, article_id INTEGER NOT NULL)")
    signatures = sa.table("minhash_signatures", sa.column("article_id"), sa.column("shingle_words"),
                          sa.column("signature"))
    _fingerprint_those_with_a_3_word_signature_alone(connection, signatures)
    kinds = signatures.c.shingle_words.in_((TWO_WORD_SHINGLES, LEAD))
    last_id = -1
    while ids := connection.scalars(
        sa.select(signatures.c.article_id).distinct().where(kinds, signatures.c.article_id > last_id)
        .order_by(signatures.c.article_id).limit(CHUNK)
    ).all():
        last_id = ids[-1]
        chunk = connection.execute(
            sa.select(signatures.c.article_id, signatures.c.shingle_words, signatures.c.signature)
            .where(kinds, signatures.c.article_id.between(ids[0], last_id))
        )
        rows = [
            (key, row.article_id)
            for row in chunk
            for key in band_keys(np.frombuffer(row.signature, dtype=np.uint32), row.shingle_words)
        ]
        if connection.dialect.name == "postgresql":  # as write_index does: two arrays, one statement
            connection.execute(
                sa.text("INSERT INTO minhash_bands_kept SELECT * FROM unnest(CAST(:keys AS bigint[]), CAST(:ids AS bigint[]))"),
                {"keys": [key for key, _ in rows], "ids": [article_id for _, article_id in rows]},
            )
        else:
            connection.exec_driver_sql("INSERT INTO minhash_bands_kept VALUES (?, ?)", rows)
    # TRUNCATE gives PostgreSQL's table and index back at once; DELETE leaves them for VACUUM.
    op.execute("TRUNCATE minhash_bands" if connection.dialect.name == "postgresql" else "DELETE FROM minhash_bands")
    op.execute("INSERT INTO minhash_bands (band_key, article_id) "
               "SELECT DISTINCT band_key, article_id FROM minhash_bands_kept ORDER BY band_key, article_id")
    op.execute("DROP TABLE minhash_bands_kept")
    op.execute(sa.text("DELETE FROM minhash_signatures WHERE shingle_words = :kind").bindparams(kind=THREE_WORD_SHINGLES))


def _fingerprint_those_with_a_3_word_signature_alone(connection: sa.Connection, signatures: sa.TableClause) -> None:
    """Write today's signatures of the articles the new layout would otherwise not index."""
    articles = sa.table("articles", sa.column("id"), sa.column("text"))
    two_word = sa.select(signatures.c.article_id).where(signatures.c.shingle_words == TWO_WORD_SHINGLES)
    last_id = -1
    while chunk := connection.execute(
        sa.select(articles.c.id, articles.c.text)
        .where(articles.c.id.in_(sa.select(signatures.c.article_id).where(signatures.c.shingle_words == THREE_WORD_SHINGLES)),
               articles.c.id.not_in(two_word), articles.c.id > last_id)
        .order_by(articles.c.id).limit(CHUNK)
    ).all():
        last_id = chunk[-1].id
        ids = [row.id for row in chunk]
        connection.execute(sa.delete(signatures).where(signatures.c.article_id.in_(ids), signatures.c.shingle_words == LEAD))
        rows = [{"article_id": row.id, "shingle_words": kind, "signature": signature.tobytes()}
                for row in chunk for kind, signature in fingerprint(row.text or "").signatures.items()]
        if rows:
            connection.execute(sa.insert(signatures), rows)


def downgrade() -> None:
    """Nothing to restore (see the module's docstring)."""
