"""Story clusters and the near-duplicate index: the SQL of the dedupe stage.

The index is two tables shared by every worker: ``minhash_signatures`` (an article's
signature of each kind) and ``minhash_bands`` (one row per LSH band key of a signature,
primary key only; migration 0008). The band layout lives here because it is the index's
format: the keys an article was written under are recomputed from its stored signatures
to delete them (``delete_index_rows``). The decisions are ``tasks.dedupe``'s.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from itertools import zip_longest

import numpy as np
from sqlalchemy import ColumnElement, Row, any_, bindparam, case, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from schemas.models import PENDING, Article, MinhashBand, MinhashSignature
from tasks.storage import changes
from tasks.storage.articles import reopened

#: LSH bands of a signature and values per band. Signature kind (the ``shingle_words`` column)
#: 2 is the MinHash signature of a text's 2-word shingles. Until migration 0016 there were 42
#: bands of it and 42 of a kind 3 (3-word shingles); band ``i``'s key does not depend on how
#: many bands there are, so the first 32 rows of an article stored then are rows of today's index.
BANDS, ROWS = 32, 3  # candidate probability 0.88 at Jaccard 0.4, 0.99 at 0.5, 0.03 at 0.1
#: Bands of kind 2 and of kind 3 before migration 0016 (which rebuilt the index in today's
#: layout): the tests build an index of that layout with ``band_keys(..., bands=...)``.
BANDS_BEFORE_0016 = 42
#: Kind of the lead signature: 3-word shingles of the text's lead paragraph, cut into fewer
#: bands (a lead is a few dozen shingles; a teaser's lead is its whole text).
LEAD = 103
LEAD_BANDS = 20  # candidate probability 0.93 at Jaccard 0.5, 0.02 at 0.1
#: Rows read from the index per query (bind-parameter limits of SQLite and PostgreSQL).
QUERY_CHUNK = 5000
#: PostgreSQL advisory lock held while a batch decides and writes its matches.
DEDUPE_LOCK_KEY = 0x6665656464757065  # "feeddupe"


def _constants(name: str, count: int) -> np.ndarray:
    """Fixed odd 64-bit constants: every process and host must hash alike."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{name}{i}".encode(), digest_size=8).digest(), "little") | 1
         for i in range(count)],
        dtype=np.uint64,
    )


_BAND_ROW = _constants("band-row", ROWS + 2)


def bands_of(kind: int) -> int:
    return LEAD_BANDS if kind == LEAD else BANDS


def band_keys(signature: np.ndarray, kind: int, bands: int | None = None) -> list[int]:
    """LSH keys (signed 64-bit): one per band of ROWS values, distinct per signature kind;
    the kind's bands unless ``bands`` says how many (an older layout's)."""
    bands = bands or bands_of(kind)
    rows = signature[: bands * ROWS].astype(np.uint64).reshape(bands, ROWS)
    keys = np.arange(bands, dtype=np.uint64) * _BAND_ROW[ROWS]
    keys += np.full(bands, kind, dtype=np.uint64) * _BAND_ROW[ROWS + 1]
    for row in range(ROWS):
        keys += rows[:, row] * _BAND_ROW[row]
    keys ^= keys >> np.uint64(29)
    return keys.view(np.int64).tolist()


def _chunks(values: Sequence, size: int = QUERY_CHUNK) -> Iterable[Sequence]:
    return (values[i : i + size] for i in range(0, len(values), size))


def _one_of(session: Session, column: ColumnElement, values: Sequence) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``= ANY`` of one array parameter, not one bound value each to parse."""
    if _is_postgresql(session):
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))
    return column.in_(values)


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# --- reads ------------------------------------------------------------------------

#: What a candidate is compared by: when it was published (its storing time if the feed gave
#: none), its feed, cluster, URL and content hash.
_CANDIDATE = (
    Article.id, Article.feed_id, Article.cluster_id, Article.created_at,
    func.coalesce(Article.published_at, Article.created_at).label("published"), Article.url, Article.content_hash,
)
_PLACED = Article.cluster_id.is_not(None)


def texts_of(session: Session, article_ids: Sequence[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    for chunk in _chunks(sorted(article_ids)):
        found.update(session.execute(select(Article.id, Article.text).where(_one_of(session, Article.id, chunk))).all())
    return found


def placed_with_url_or_hash(session: Session, urls: Sequence[str], hashes: Sequence[str]) -> list[Row]:
    """Articles in a cluster with one of these URLs or content hashes (``_CANDIDATE`` columns)."""
    found = []
    for url_chunk, hash_chunk in zip_longest(_chunks(urls), _chunks(hashes), fillvalue=()):
        same = [_one_of(session, column, chunk)
                for column, chunk in ((Article.url, url_chunk), (Article.content_hash, hash_chunk)) if chunk]
        found.extend(session.execute(select(*_CANDIDATE).where(or_(*same), _PLACED)))
    return found


def band_sharers(session: Session, keys: Sequence[int]) -> dict[int, list[int]]:
    """Article id -> the given band keys it is stored under."""
    found: dict[int, list[int]] = defaultdict(list)
    for chunk in _chunks(sorted(set(keys))):
        for band_key, article_id in session.execute(
            select(MinhashBand.band_key, MinhashBand.article_id).where(_one_of(session, MinhashBand.band_key, chunk))
        ):
            found[article_id].append(band_key)
    return found


def signatures_of(session: Session, article_ids: Sequence[int]) -> dict[int, dict[int, np.ndarray]]:
    """Article id -> signature kind -> its stored signature. Nothing else is read: most articles
    sharing a band key with a new one share no more than that, and are dropped on their signatures."""
    found: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
    for chunk in _chunks(sorted(article_ids)):
        for article_id, kind, signature in session.execute(
            select(MinhashSignature.article_id, MinhashSignature.shingle_words, MinhashSignature.signature)
            .where(_one_of(session, MinhashSignature.article_id, chunk))
        ):
            found[article_id][kind] = np.frombuffer(signature, dtype=np.uint32)
    return found


def placed_with_texts(session: Session, article_ids: Sequence[int]) -> list[Row]:
    """``_CANDIDATE`` columns plus ``text`` of these articles, for those in a cluster (an article
    a feed removal deleted since its band rows were read is simply not found)."""
    found = []
    for chunk in _chunks(sorted(article_ids)):
        found.extend(session.execute(select(*_CANDIDATE, Article.text).where(_one_of(session, Article.id, chunk), _PLACED)))
    return found


def published_times(session: Session, article_ids: Sequence[int]) -> dict[int, datetime]:
    """Article id -> when it was published (its storing time if its feed gave none)."""
    found: dict[int, datetime] = {}
    published = func.coalesce(Article.published_at, Article.created_at)
    for chunk in _chunks(sorted(article_ids)):
        found.update(session.execute(select(Article.id, published).where(_one_of(session, Article.id, chunk))).all())
    return found


# --- writes -----------------------------------------------------------------------


def lock_decisions(session: Session) -> None:
    """Make the decisions of concurrent batches happen one after another, until commit.

    On PostgreSQL an advisory lock; SQLite's BEGIN IMMEDIATE already serialises writers. So two
    copies of a story in two workers cannot both become its canonical article.
    """
    if _is_postgresql(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DEDUPE_LOCK_KEY})


def repoint_cluster(session: Session, old: int, new: int, reason: str | None, now: datetime) -> list[int]:
    """Name ``new`` the canonical article of cluster ``old``: every stored member gets it as
    ``cluster_id`` and ``duplicate_of`` (the old canonical with ``reason``), ``updated_at`` = now
    and a new change value (``changes.note``), so readers of changes see them; finished ones go
    back to the announcing stage (``articles.reopened``). Return the ids of the articles changed."""
    moved = session.scalars(
        update(Article)
        .where(Article.cluster_id == old, Article.id != new)
        .values(
            cluster_id=new, duplicate_of=new, updated_at=now,
            duplicate_reason=case((Article.id == old, reason), else_=Article.duplicate_reason),
            **reopened(),
        )
        .returning(Article.id)
        .execution_options(synchronize_session=False)
    ).all()
    changes.note(session, moved)
    return list(moved)


def write_index(session: Session, signatures: Mapping[int, Mapping[int, np.ndarray]]) -> None:
    """Replace these articles' signatures (article id -> kind -> signature) and band keys."""
    delete_index_rows(session, sorted(signatures))
    signature_rows = [
        {"article_id": article_id, "shingle_words": kind, "signature": signature.tobytes()}
        for article_id, by_kind in signatures.items()
        for kind, signature in by_kind.items()
    ]
    if signature_rows:
        session.execute(insert(MinhashSignature), signature_rows)
    # In key order: consecutive rows land on the same or neighbouring B-tree pages
    # (PostgreSQL: 30-40% less time in the INSERT; docs/dedupe.md).
    bands = sorted({
        (key, article_id)
        for article_id, by_kind in signatures.items()
        for kind, signature in by_kind.items()
        for key in band_keys(signature, kind)
    })
    if not bands:
        return
    if _is_postgresql(session):
        # One statement with two arrays: row by row, 42 rows per article cost more than the rest of the stage.
        session.execute(
            text("INSERT INTO minhash_bands (band_key, article_id) "
                 "SELECT * FROM unnest(CAST(:keys AS bigint[]), CAST(:ids AS bigint[]))"),
            {"keys": [key for key, _ in bands], "ids": [article_id for _, article_id in bands]},
        )
    else:
        # The driver's executemany of tuples: SQLAlchemy's handling of 42 dicts an article
        # cost as much CPU as SQLite's inserts themselves.
        session.connection().exec_driver_sql("INSERT INTO minhash_bands (band_key, article_id) VALUES (?, ?)", bands)


def delete_index_rows(session: Session, article_ids: Sequence[int]) -> None:
    """Delete these articles' band rows and signatures.

    ``minhash_bands`` has no index on ``article_id`` (migration 0008), so the band rows
    are found from the stored signatures: ``band_keys`` gives exactly the keys they were
    written under, and each row goes by its primary key. Articles never deduped have no
    signature: for them this is one query that finds nothing. Used by dedupe for a
    batch's revised articles and by ``tasks.storage.retention.delete_articles`` (prune, ``feeds remove``).
    """
    for chunk in _chunks(article_ids):
        stored = session.execute(
            select(MinhashSignature.article_id, MinhashSignature.shingle_words, MinhashSignature.signature)
            .where(_one_of(session, MinhashSignature.article_id, chunk))
        ).all()
        if not stored:
            continue
        bands = sorted({
            (key, article_id)
            for article_id, kind, signature in stored
            for key in band_keys(np.frombuffer(signature, dtype=np.uint32), kind)
        })
        if _is_postgresql(session):
            # One statement with two arrays, each row found through the primary key.
            session.execute(
                text("DELETE FROM minhash_bands WHERE (band_key, article_id) IN "
                     "(SELECT * FROM unnest(CAST(:keys AS bigint[]), CAST(:ids AS bigint[])))"),
                {"keys": [key for key, _ in bands], "ids": [article_id for _, article_id in bands]},
            )
        else:
            session.connection().exec_driver_sql(
                "DELETE FROM minhash_bands WHERE band_key = ? AND article_id = ?", bands
            )
        session.execute(delete(MinhashSignature).where(
            _one_of(session, MinhashSignature.article_id, sorted({row.article_id for row in stored}))
        ))
