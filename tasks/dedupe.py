"""Dedupe stage: one story, however many times and places it appears.

Parse already stores one row per feed entry (its GUID, link or title+date),
an unchanged repeat as nothing and a changed one as a new revision. This stage
links the other copies of a story to the first one seen:

* the same canonical URL, or the same normalized text (``content_hash``);
* a near duplicate: MinHash signatures of word shingles, found through LSH
  band keys stored in SQL (``minhash_bands``) and confirmed by an estimated
  Jaccard similarity of at least ``FEEDMILL_DEDUPE_THRESHOLD``;
* a "new" entry of a feed that repeats a recent entry of the same feed is that
  entry again under a new GUID (reason ``reissue``).

A copy gets ``duplicate_of`` and ``cluster_id`` = the first-seen article of its
story cluster; that article has ``cluster_id`` = its own id. The shingling,
signatures, band keys and the choice of a match are pure functions; ``DedupeBatch``
does the SQL: a few queries per batch, under a lock that makes the decisions of
concurrent workers happen one batch after another (docs/dedupe.md).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from itertools import zip_longest
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from celery import shared_task
from sqlalchemy import ColumnElement, Row, any_, bindparam, delete, insert, or_, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import PENDING, Article, MinhashBand, MinhashSignature, utcnow
from schemas.payloads import ArticleBatch
from schemas.pipeline import stage_named
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, hand_on_articles
from tasks.storage.articles import Changes, run_article_stage

STAGE = stage_named("dedupe").name
#: MinHash permutations; LSH uses the first BANDS * ROWS of them.
NUM_PERM = 128
BANDS, ROWS = 42, 3  # candidate probability 0.94 at Jaccard 0.4, 0.04 at 0.1
#: Word shingle sizes. 3 keeps an edited copy (new dateline and footer, the
#: last third cut and 5% of words changed) above Jaccard 0.4, where 5-word
#: shingles drop it to about 0.43 and the estimate's noise misses a third of them.
SHINGLE_WORDS = 3
#: Texts shorter than this are also shingled by 2 words, which stay similar
#: when one changed word is a large share of a short summary.
SHORT_SHINGLE_WORDS, SHORT_TEXT_WORDS = 2, 80
#: Texts shorter than this ("Watch the video") are matched by URL only.
MIN_MATCH_WORDS = 10
#: Rows read from the index per query (bind-parameter limits of SQLite and PostgreSQL).
QUERY_CHUNK = 5000
#: PostgreSQL advisory lock held while a batch decides and writes its matches.
DEDUPE_LOCK_KEY = 0x6665656464757065  # "feeddupe"

URL, TEXT, NEAR, REISSUE = "url", "text", "near", "reissue"

_WORD = re.compile(r"[^\W_]+")


def _constants(name: str, count: int) -> np.ndarray:
    """Fixed odd 64-bit constants: every process and host must hash alike."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{name}{i}".encode(), digest_size=8).digest(), "little") | 1
         for i in range(count)],
        dtype=np.uint64,
    )


_PERM_A = _constants("minhash-a", NUM_PERM)[:, None]
_PERM_B = _constants("minhash-b", NUM_PERM)[:, None]
_POSITION = _constants("shingle-position", max(SHINGLE_WORDS, SHORT_SHINGLE_WORDS))
_BAND_ROW = _constants("band-row", ROWS + 2)


# --- pure functions -----------------------------------------------------------


def words(text: str) -> list[str]:
    """Lowercased words, punctuation and spacing dropped."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def content_fingerprint(text: str) -> str | None:
    """Hash of the text with case, punctuation and spacing normalized away."""
    return _hash_words(words(text))


def _hash_words(text_words: Sequence[str]) -> str | None:
    normalized = " ".join(text_words)
    return hashlib.sha256(normalized.encode()).hexdigest() if normalized else None


def shingle_sizes(word_count: int) -> tuple[int, ...]:
    """The shingle sizes a text of this many words is compared by."""
    if word_count < MIN_MATCH_WORDS:
        return ()
    if word_count < SHORT_TEXT_WORDS:
        return (SHORT_SHINGLE_WORDS, SHINGLE_WORDS)
    return (SHINGLE_WORDS,)


def word_hashes(text_words: Sequence[str]) -> np.ndarray:
    """CRC-32 of each word's UTF-8 bytes, as 64-bit integers: what shingles are hashed from."""
    return np.fromiter(map(zlib.crc32, map(str.encode, text_words)), dtype=np.uint64, count=len(text_words))


def shingle_hashes(word_hashes: np.ndarray, size: int) -> np.ndarray:
    """64-bit hashes of the text's ``size``-word shingles, from its ``word_hashes``.

    Repeated shingles stay: a minimum over them is the same, and dropping them
    (a sort) cost more than hashing them twice.
    """
    count = len(word_hashes) - size + 1
    if count < 1:
        return np.empty(0, dtype=np.uint64)
    hashes = np.zeros(count, dtype=np.uint64)
    for position in range(size):
        hashes += word_hashes[position : position + count] * _POSITION[position]
    return hashes


def minhash(hashes: np.ndarray) -> np.ndarray:
    """MinHash signature: per permutation (multiply-add-shift hashing), the least 32-bit value."""
    permuted = hashes[None, :] * _PERM_A
    permuted += _PERM_B
    return (permuted.min(axis=1) >> np.uint64(32)).astype(np.uint32)


def band_keys(signature: np.ndarray, size: int) -> list[int]:
    """LSH keys (signed 64-bit): one per band of ROWS values, distinct per shingle size."""
    rows = signature[: BANDS * ROWS].astype(np.uint64).reshape(BANDS, ROWS)
    keys = np.arange(BANDS, dtype=np.uint64) * _BAND_ROW[ROWS]
    keys += np.full(BANDS, size, dtype=np.uint64) * _BAND_ROW[ROWS + 1]
    for row in range(ROWS):
        keys += rows[:, row] * _BAND_ROW[row]
    keys ^= keys >> np.uint64(29)
    return keys.view(np.int64).tolist()


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal signature values: an unbiased estimate of the Jaccard similarity."""
    return float(np.count_nonzero(a == b)) / NUM_PERM


def identifying_url(url: str | None) -> str | None:
    """The canonical URL if it can name an article; a site's front page cannot."""
    if not url or urlsplit(url).path in ("", "/"):
        return None
    return url


@dataclass(frozen=True)
class Fingerprint:
    """What the stage compares of one text."""

    content_hash: str | None
    #: Long enough for its content hash to identify a story.
    matchable: bool
    #: Shingle size -> MinHash signature.
    signatures: dict[int, np.ndarray]

    @cached_property  # read four times per article by the stage
    def band_keys(self) -> list[int]:
        return [key for size, sig in self.signatures.items() for key in band_keys(sig, size)]


def fingerprint(text: str) -> Fingerprint:
    """Content hash and MinHash signatures of one text, its words split once."""
    text_words = words(text)
    sizes = shingle_sizes(len(text_words))
    hashes = word_hashes(text_words) if sizes else None
    return Fingerprint(
        content_hash=_hash_words(text_words),
        matchable=len(text_words) >= MIN_MATCH_WORDS,
        signatures={size: minhash(shingle_hashes(hashes, size)) for size in sizes},
    )


@dataclass
class Known:
    """An article already placed in a story cluster: a possible match."""

    id: int
    feed_id: int
    cluster_id: int
    seen_at: datetime
    url: str | None = None
    content_hash: str | None = None
    signatures: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Match:
    known: Known
    reason: str
    similarity: float


def best_match(
    fp: Fingerprint,
    url: str | None,
    feed_id: int,
    candidates: Iterable[Known],
    threshold: float,
    reissued_since: datetime,
) -> Match | None:
    """The article this one repeats, or None.

    A candidate matches on the same identifying URL, the same text, or an
    estimated Jaccard at or above ``threshold`` at a shingle size both have.
    The best is the first by URL, text, near; then the oldest cluster (the
    story's first-seen article), then similarity. If it is an entry of the
    same feed seen since ``reissued_since``, this is that entry under a new GUID.
    """
    url = identifying_url(url)
    found = []
    for known in candidates:
        if url and known.url == url:
            reason, similarity = URL, 1.0
        elif fp.matchable and fp.content_hash and known.content_hash == fp.content_hash:
            reason, similarity = TEXT, 1.0
        else:
            similarity = max(
                (jaccard_estimate(sig, known.signatures[size])
                 for size, sig in fp.signatures.items() if size in known.signatures),
                default=0.0,
            )
            if similarity < threshold:
                continue
            reason = NEAR
        found.append(((URL, TEXT, NEAR).index(reason), known.cluster_id, -similarity, known.id, reason, known))
    if not found:
        return None
    _, _, negative_similarity, _, reason, known = min(found, key=lambda item: item[:4])
    if known.feed_id == feed_id and known.seen_at >= reissued_since:
        reason = REISSUE
    return Match(known, reason, -negative_similarity)


class CandidateIndex:
    """Known articles by URL, content hash and band key, for one batch's lookups."""

    def __init__(self) -> None:
        self._by_key: dict[object, dict[int, Known]] = defaultdict(dict)

    def add(self, known: Known, keys: Iterable[object]) -> None:
        for key in keys:
            self._by_key[key][known.id] = known

    def candidates(self, keys: Iterable[object]) -> list[Known]:
        found: dict[int, Known] = {}
        for key in keys:
            found.update(self._by_key.get(key, {}))
        return list(found.values())


def lookup_keys(fp: Fingerprint, url: str | None) -> list[object]:
    """The index keys an article is found by: URL, content hash, band keys."""
    keys: list[object] = list(fp.band_keys)
    if identifying_url(url):
        keys.append(("url", url))
    if fp.matchable and fp.content_hash:
        keys.append(("text", fp.content_hash))
    return keys


# --- SQL ------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    content_hash: str | None
    cluster_id: int
    duplicate_of: int | None
    reason: str | None


class DedupeBatch:
    """One batch of the stage: decide every article in a few queries, then write each.

    ``prepare`` runs once per claimed batch (see ``run_article_stage``): it
    takes the dedupe lock, reads the candidates of all its articles at once,
    decides them in id order (so a batch's own copies link to each other) and
    writes their index rows. ``decide`` then gives one article's columns.
    ``fingerprinted`` (article id -> its ``updated_at`` and fingerprint) holds the
    fingerprints computed before the writing transaction; an article written
    since is fingerprinted again.
    """

    #: What the writing transaction reads of each article; the text comes from ``fingerprinted``.
    columns = (Article.feed_id, Article.url, Article.created_at, Article.cluster_id, Article.content_hash,
               Article.updated_at)

    def __init__(self, settings: Settings, fingerprinted: dict[int, tuple[datetime, Fingerprint]]) -> None:
        self.threshold = settings.dedupe_threshold
        self.reissue_window = timedelta(days=settings.dedupe_reissue_days)
        self.fingerprinted = fingerprinted
        self.decisions: dict[int, Decision] = {}

    def _fingerprints(self, session: Session, rows: Sequence[Row[Any]]) -> dict[int, Fingerprint]:
        """Each article's fingerprint: the one computed ahead unless the article was written since."""
        fps = {}
        for row in rows:
            ahead = self.fingerprinted.get(row.id)
            if ahead is not None and ahead[0] == row.updated_at:
                fps[row.id] = ahead[1]
        if stale := [row.id for row in rows if row.id not in fps]:
            for article_id, body in session.execute(select(Article.id, Article.text).where(Article.id.in_(stale))):
                fps[article_id] = fingerprint(body or "")
        return fps

    def prepare(self, session: Session, articles: Sequence[Row[Any]]) -> None:
        if not articles:
            return
        fps = self._fingerprints(session, articles)
        if _is_postgresql(session):
            # Decisions of concurrent batches happen one after another (SQLite's
            # BEGIN IMMEDIATE already serialises writers), so two copies of a
            # story in two workers cannot both become first-seen.
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DEDUPE_LOCK_KEY})
        batch_ids = {a.id for a in articles}
        index = _load_candidates(session, articles, fps, batch_ids)
        now = utcnow()
        for article in articles:  # in id order
            fp = fps[article.id]
            decision = self._decide(article, fp, index, now)
            self.decisions[article.id] = decision
            index.add(
                Known(article.id, article.feed_id, decision.cluster_id, article.created_at or now,
                      article.url, fp.content_hash if fp.matchable else None, fp.signatures),
                lookup_keys(fp, article.url),
            )
        _write_index(session, fps)

    def _decide(self, article: Row[Any], fp: Fingerprint, index: CandidateIndex, now: datetime) -> Decision:
        if article.cluster_id == article.id:
            # First-seen stays first-seen through revisions: its copies keep pointing at it.
            return Decision(fp.content_hash, article.id, None, None)
        match = best_match(
            fp, article.url, article.feed_id, index.candidates(lookup_keys(fp, article.url)),
            self.threshold, now - self.reissue_window,
        )
        if match is None:
            return Decision(fp.content_hash, article.id, None, None)
        return Decision(fp.content_hash, match.known.cluster_id, match.known.cluster_id, match.reason)

    def decide(self, article: Row[Any]) -> Changes:
        decision = self.decisions[article.id]
        changes: Changes = {
            "content_hash": decision.content_hash,
            "cluster_id": decision.cluster_id,
            "duplicate_of": decision.duplicate_of,
            "duplicate_reason": decision.reason,
        }
        if article.content_hash and article.content_hash != decision.content_hash:
            changes["previous_content_hash"] = article.content_hash
        return changes


def _chunks(values: Sequence, size: int = QUERY_CHUNK) -> Iterable[Sequence]:
    return (values[i : i + size] for i in range(0, len(values), size))


def _load_candidates(
    session: Session, articles: Sequence[Row[Any]], fps: dict[int, Fingerprint], batch_ids: set[int]
) -> CandidateIndex:
    """Every placed article outside the batch sharing a URL, a text or a band key with it."""
    found: dict[int, Known] = {}
    columns = (Article.id, Article.feed_id, Article.cluster_id, Article.created_at, Article.url, Article.content_hash)
    placed = Article.cluster_id.is_not(None)

    def known(row) -> Known:
        return found.setdefault(
            row.id, Known(row.id, row.feed_id, row.cluster_id, row.created_at, row.url, row.content_hash)
        )

    urls = sorted({u for a in articles if (u := identifying_url(a.url))})
    hashes = sorted({fp.content_hash for fp in fps.values() if fp.matchable and fp.content_hash})
    for url_chunk, hash_chunk in zip_longest(_chunks(urls), _chunks(hashes), fillvalue=()):
        same = [_one_of(session, column, chunk)
                for column, chunk in ((Article.url, url_chunk), (Article.content_hash, hash_chunk)) if chunk]
        for row in session.execute(select(*columns).where(or_(*same), placed)):
            if row.id not in batch_ids:
                known(row)
    band_keys_of: dict[int, list[int]] = defaultdict(list)
    for chunk in _chunks(sorted({key for fp in fps.values() for key in fp.band_keys})):
        rows = session.execute(
            select(MinhashBand.band_key, MinhashBand.article_id).where(_one_of(session, MinhashBand.band_key, chunk))
        )
        for band_key, article_id in rows:
            if article_id not in batch_ids:
                band_keys_of[article_id].append(band_key)
    # The join with articles drops band rows whose article is gone: minhash_bands has no
    # foreign key (migration 0008), and a feed removal racing a batch can leave a few behind.
    for chunk in _chunks(sorted(band_keys_of)):
        for row in session.execute(
            select(*columns, MinhashSignature.shingle_words, MinhashSignature.signature)
            .join(MinhashSignature, MinhashSignature.article_id == Article.id)
            .where(_one_of(session, Article.id, chunk), placed)
        ):
            known(row).signatures[row.shingle_words] = np.frombuffer(row.signature, dtype=np.uint32)
    index = CandidateIndex()
    for article_id, candidate in found.items():
        keys: list[object] = list(band_keys_of.get(article_id, ()))
        if candidate.url:
            keys.append(("url", candidate.url))
        if candidate.content_hash:
            keys.append(("text", candidate.content_hash))
        index.add(candidate, keys)
    return index


def _write_index(session: Session, fps: dict[int, Fingerprint]) -> None:
    """Replace the batch's signatures and band keys (a revision's old ones go)."""
    delete_index_rows(session, sorted(fps))
    signature_rows = [
        {"article_id": article_id, "shingle_words": size, "signature": signature.tobytes()}
        for article_id, fp in fps.items()
        for size, signature in fp.signatures.items()
    ]
    if signature_rows:
        session.execute(insert(MinhashSignature), signature_rows)
    # In key order: consecutive rows land on the same or neighbouring B-tree pages
    # (PostgreSQL: 30-40% less time in the INSERT; docs/dedupe.md).
    bands = sorted({(key, article_id) for article_id, fp in fps.items() for key in fp.band_keys})
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
    batch's revised articles and by ``feedmill feeds remove`` before articles are deleted.
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
            for article_id, size, signature in stored
            for key in band_keys(np.frombuffer(signature, dtype=np.uint32), size)
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


def _one_of(session: Session, column: ColumnElement, values: Sequence) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``= ANY`` of one array parameter, not one bound value each to parse."""
    if _is_postgresql(session):
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))
    return column.in_(values)


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def run_dedupe(settings: Settings, article_ids: Sequence[int]) -> list[int]:
    """Dedupe a batch; return the ids ready for classify.

    The fingerprints are computed between a read transaction and the writing one: on
    SQLite every transaction holds the one write lock, and on PostgreSQL the dedupe
    lock serialises batches, so other workers would wait while this one hashes.
    """
    with session_scope(settings, read_only=True) as session:
        texts = session.execute(
            select(Article.id, Article.text, Article.updated_at)
            .where(Article.id.in_(article_ids), Article.stage == STAGE, Article.status == PENDING)
        ).all()
    fingerprinted = {article_id: (updated_at, fingerprint(body or "")) for article_id, body, updated_at in texts}
    batch = DedupeBatch(settings, fingerprinted)
    return run_article_stage(settings, STAGE, article_ids, batch.columns, batch.decide, prepare=batch.prepare)


@shared_task(base=StageTask, name="feedmill.dedupe")
def dedupe_task(message: dict) -> None:
    hand_on_articles(STAGE, run_dedupe(current_settings(), ArticleBatch.from_message(message).article_ids))
