"""Dedupe stage: one story, however many times and places it appears.

Parse already stores one row per feed entry (its GUID, link or title+date),
an unchanged repeat as nothing and a changed one as a new revision. This stage
links the other copies of a story to its original:

* the same canonical URL, or the same normalized text (``content_hash``);
* a near duplicate: candidates through LSH band keys stored in SQL, from MinHash
  signatures of the text's 2-word shingles (resemblance, robust to changed words)
  and of its lead paragraph (a teaser, or a story an update extends); each
  confirmed on the texts themselves: at least ``FEEDMILL_DEDUPE_THRESHOLD`` of the
  shorter text's 3-word shingles are in the longer (containment);
* a "new" entry of a feed that repeats a recent entry of the same feed is that
  entry again under a new GUID (reason ``reissue``).

A cluster's canonical article is its earliest published copy (ties: the first
seen); every other copy has ``duplicate_of`` = ``cluster_id`` = its id, and the
canonical has ``cluster_id`` = its own id. When an earlier copy arrives after the
others, the cluster is re-pointed at it in the batch's transaction. Shingling,
signatures, matching and placing are pure functions here; the SQL is
``tasks.storage.clusters``'s (docs/dedupe.md).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np
from celery import shared_task
from sqlalchemy import Row
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import Article, utcnow
from schemas.payloads import ArticleBatch
from schemas.pipeline import stage_named
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, announce_changed, hand_on_articles
from tasks.storage import clusters
from tasks.storage.articles import Changes, article_rows, run_article_stage
from tasks.storage.clusters import BANDS, LEAD, LEAD_BANDS, ROWS, band_keys

STAGE = stage_named("dedupe").name
#: MinHash permutations of a text's signature: its BANDS * ROWS banded values and more, which
#: sharpen the estimate a candidate is judged worth comparing by (``worth_comparing``); a lead's
#: signature has LEAD_BANDS * ROWS.
NUM_PERM = 128
#: Word shingle size of the text's signature: 2 keeps a copy with 15% of its words replaced near
#: Jaccard 0.55 (3 drops it to 0.36-0.5), and an edited copy (dateline and footer added, the
#: last third cut) near 0.65. A second signature, of 3-word shingles, found no copy this one missed on
#: dedupe_hard.py and doubled the band index; migration 0016 removed it (docs/dedupe.md).
TEXT_SHINGLE_WORDS = 2
#: What the exact check compares: the sets of 3-word shingles of the two texts.
EXACT_SHINGLE_WORDS = 3
#: The lead: the first paragraph of at least LEAD_MIN_WORDS words, its first LEAD_WORDS.
LEAD_MIN_WORDS, LEAD_WORDS = 12, 40
#: A candidate's texts are compared only when some signature estimates their Jaccard at least this.
CANDIDATE_ESTIMATE = 0.2
#: Shingles two texts must share to be copies by containment, however short the shorter is.
MIN_SHARED_SHINGLES = 10
#: A copy's shared shingles are spread through the shorter text: at least SPREAD of its windows
#: of WINDOW_SHINGLES shingles have WINDOW_FOUND of theirs in the longer. A follow-up story that
#: quotes whole paragraphs of another has windows with none (docs/dedupe.md).
WINDOW_SHINGLES, WINDOW_FOUND, SPREAD = 20, 0.15, 0.9
#: From this containment on, a copy is one however its shared shingles are spread.
STRONG_CONTAINMENT = 0.75
#: Texts shorter than this ("Watch the video") are matched by URL only.
MIN_MATCH_WORDS = 10

URL, TEXT, NEAR, REISSUE = "url", "text", "near", "reissue"

_WORD = re.compile(r"[^\W_]+")
_PARAGRAPH = re.compile(r"\n+")


def _constants(name: str, count: int) -> np.ndarray:
    """Fixed odd 64-bit constants: every process and host must hash alike."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{name}{i}".encode(), digest_size=8).digest(), "little") | 1
         for i in range(count)],
        dtype=np.uint64,
    )


_PERM_A = _constants("minhash-a", NUM_PERM)[:, None]
_PERM_B = _constants("minhash-b", NUM_PERM)[:, None]
_POSITION = _constants("shingle-position", max(TEXT_SHINGLE_WORDS, EXACT_SHINGLE_WORDS))
#: The kinds of signature an article is indexed by (the ``shingle_words`` column).
SIGNATURE_KINDS = (TEXT_SHINGLE_WORDS, LEAD)


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


def lead_words(text: str) -> list[str]:
    """The words of the lead: the first paragraph long enough to be one (a byline or a
    one-line kicker is not), cut to LEAD_WORDS; a text without one leads with its first words."""
    for paragraph in _PARAGRAPH.split(text):
        paragraph_words = words(paragraph)
        if len(paragraph_words) >= LEAD_MIN_WORDS:
            return paragraph_words[:LEAD_WORDS]
    return words(text)[:LEAD_WORDS]


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


def minhash(hashes: np.ndarray, permutations: int = NUM_PERM) -> np.ndarray:
    """MinHash signature: per permutation (multiply-add-shift hashing), the least 32-bit value."""
    permuted = hashes[None, :] * _PERM_A[:permutations]
    permuted += _PERM_B[:permutations]
    return (permuted.min(axis=1) >> np.uint64(32)).astype(np.uint32)


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal signature values: an unbiased estimate of the Jaccard similarity."""
    return float(np.count_nonzero(a == b)) / len(a)


@dataclass(frozen=True)
class Shingles:
    """A text's 3-word shingle hashes in text order (and, once compared, distinct)."""

    sequence: np.ndarray

    @classmethod
    def of(cls, word_hashes: np.ndarray) -> Shingles:
        return cls(shingle_hashes(word_hashes, EXACT_SHINGLE_WORDS))

    @cached_property  # sorted only when compared: most articles never are
    def distinct(self) -> np.ndarray:
        return np.unique(self.sequence)


def copy_measures(a: Shingles, b: Shingles) -> tuple[float, int, float]:
    """Containment (share of the text with fewer distinct shingles found in the other), how many
    distinct shingles they share, and spread (share of its windows with WINDOW_FOUND found)."""
    shorter, longer = (a, b) if a.distinct.size <= b.distinct.size else (b, a)
    if not shorter.distinct.size:
        return 0.0, 0, 0.0
    found = np.isin(shorter.distinct, longer.distinct, assume_unique=True)
    in_order = np.isin(shorter.sequence, longer.distinct)
    windows = np.array_split(in_order, max(1, in_order.size // WINDOW_SHINGLES))
    spread = sum(window.mean() >= WINDOW_FOUND for window in windows) / len(windows)
    return float(found.mean()), int(found.sum()), spread


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
    #: Signature kind (shingle size, or ``LEAD``) -> MinHash signature.
    signatures: dict[int, np.ndarray]
    #: The text's 3-word shingles, for the exact check.
    shingles: Shingles

    @cached_property  # read four times per article by the stage
    def band_keys(self) -> list[int]:
        return [key for kind, sig in self.signatures.items() for key in band_keys(sig, kind)]


def fingerprint(text: str) -> Fingerprint:
    """Content hash, MinHash signatures and exact shingles of one text, its words split once."""
    text_words = words(text)
    matchable = len(text_words) >= MIN_MATCH_WORDS
    signatures: dict[int, np.ndarray] = {}
    hashes = word_hashes(text_words)
    shingles = Shingles.of(hashes)
    if matchable:
        signatures[TEXT_SHINGLE_WORDS] = minhash(shingle_hashes(hashes, TEXT_SHINGLE_WORDS))
        lead = shingle_hashes(word_hashes(lead_words(text)), EXACT_SHINGLE_WORDS)
        if lead.size:
            signatures[LEAD] = minhash(lead, LEAD_BANDS * ROWS)
    return Fingerprint(_hash_words(text_words), matchable, signatures, shingles)


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
    #: Its 3-word shingles, once its text is read (None: not compared).
    shingles: Shingles | None = None
    #: When it was published (when it was stored, if its feed gave no date).
    published: datetime | None = None


@dataclass(frozen=True)
class Match:
    known: Known
    reason: str
    similarity: float


def worth_comparing(pairs: Sequence[tuple[Fingerprint, Mapping[int, np.ndarray]]]) -> np.ndarray:
    """For each (fingerprint, stored signatures) pair, whether some signature kind of both
    estimates their Jaccard at CANDIDATE_ESTIMATE or more; one array comparison per kind
    (a batch has tens of thousands of pairs at 100,000 stored articles, nearly all not worth it)."""
    worth = np.zeros(len(pairs), dtype=bool)
    for kind in SIGNATURE_KINDS:
        having = [i for i, (fp, stored) in enumerate(pairs) if kind in fp.signatures and kind in stored]
        if not having:
            continue
        new = np.stack([pairs[i][0].signatures[kind] for i in having])
        old = np.stack([pairs[i][1][kind] for i in having])
        worth[having] |= np.count_nonzero(new == old, axis=1) >= CANDIDATE_ESTIMATE * new.shape[1]
    return worth


def matches(
    fp: Fingerprint,
    url: str | None,
    feed_id: int,
    candidates: Iterable[Known],
    threshold: float,
    reissued_since: datetime,
) -> list[Match]:
    """The best match in each cluster this article repeats, the best first; empty for none.

    A candidate matches on the same identifying URL, the same text, or, when its
    shingles are known, a containment at or above ``threshold`` with at least
    MIN_SHARED_SHINGLES shared, spread through the shorter text (SPREAD) unless it
    reaches STRONG_CONTAINMENT. The best is the first by URL, text, near; then the
    oldest cluster, then similarity. If the best is an entry of the same feed seen since
    ``reissued_since``, this is that entry under a new GUID (reason ``reissue``).
    """
    url = identifying_url(url)
    found = []
    for known in candidates:
        if url and known.url == url:
            reason, similarity = URL, 1.0
        elif fp.matchable and fp.content_hash and known.content_hash == fp.content_hash:
            reason, similarity = TEXT, 1.0
        elif fp.matchable and known.shingles is not None:
            similarity, shared, spread = copy_measures(fp.shingles, known.shingles)
            if similarity < threshold or shared < MIN_SHARED_SHINGLES or (
                spread < SPREAD and similarity < STRONG_CONTAINMENT
            ):
                continue
            reason = NEAR
        else:
            continue
        found.append(((URL, TEXT, NEAR).index(reason), known.cluster_id, -similarity, known.id, reason, known))
    best: dict[int, Match] = {}
    for _, cluster, negative_similarity, _, reason, known in sorted(found, key=lambda item: item[:4]):
        best.setdefault(cluster, Match(known, reason, -negative_similarity))
    ordered = list(best.values())
    if ordered and ordered[0].known.feed_id == feed_id and ordered[0].known.seen_at >= reissued_since:
        ordered[0] = replace(ordered[0], reason=REISSUE)
    return ordered


@dataclass(frozen=True)
class Repoint:
    """Cluster ``old`` takes ``new`` as its canonical; the old canonical becomes a copy for ``reason``."""

    old: int
    new: int
    reason: str


@dataclass(frozen=True)
class Placement:
    """Where an article goes: its cluster, what it is a copy of and why, and the clusters re-pointed."""

    cluster_id: int
    duplicate_of: int | None
    reason: str | None
    repoints: tuple[Repoint, ...] = ()


def place(article_id: int, published: datetime, found: Sequence[Match],
          canonical_published: dict[int, datetime]) -> Placement:
    """Place an article by its ``matches``: the clusters it repeats become one, named by the
    earliest published of the article and those clusters' canonical articles (ties: the first
    seen; a stored canonical before the new article, the lower id between two stored ones).

    A reissue (the same feed's entry again) joins its match's cluster and changes nothing else.
    """
    if not found:
        return Placement(article_id, None, None)
    if found[0].reason == REISSUE:
        return Placement(found[0].known.cluster_id, found[0].known.cluster_id, REISSUE)
    by_cluster = {match.known.cluster_id: match for match in found}
    canonical = min(by_cluster, key=lambda c: (canonical_published.get(c, published), c))
    if published < canonical_published.get(canonical, published):
        canonical = article_id
    repoints = tuple(Repoint(c, canonical, match.reason) for c, match in by_cluster.items() if c != canonical)
    if canonical == article_id:
        return Placement(article_id, None, None, repoints)
    return Placement(canonical, canonical, by_cluster[canonical].reason, repoints)


class CandidateIndex:
    """Known articles by URL, content hash and band key, for one batch's lookups."""

    def __init__(self) -> None:
        self._by_key: dict[object, dict[int, Known]] = defaultdict(dict)
        self._clusters: dict[int, dict[int, Known]] = defaultdict(dict)

    def add(self, known: Known, keys: Iterable[object]) -> None:
        for key in keys:
            self._by_key[key][known.id] = known
        self._clusters[known.cluster_id][known.id] = known

    def candidates(self, keys: Iterable[object]) -> list[Known]:
        found: dict[int, Known] = {}
        for key in keys:
            found.update(self._by_key.get(key, {}))
        return list(found.values())

    def repoint(self, old: int, new: int) -> None:
        """Cluster ``old`` is now named ``new``."""
        members = self._clusters.pop(old, {})
        for known in members.values():
            known.cluster_id = new
        self._clusters[new].update(members)


def lookup_keys(fp: Fingerprint, url: str | None) -> list[object]:
    """The index keys an article is found by: URL, content hash, band keys."""
    keys: list[object] = list(fp.band_keys)
    if identifying_url(url):
        keys.append(("url", url))
    if fp.matchable and fp.content_hash:
        keys.append(("text", fp.content_hash))
    return keys


@dataclass(frozen=True)
class Decision:
    content_hash: str | None
    cluster_id: int
    duplicate_of: int | None
    reason: str | None


def repointed(decisions: dict[int, Decision], repoint: Repoint) -> dict[int, Decision]:
    """The batch's decisions after ``repoint``: its members point at the new canonical."""
    changed = {}
    for article_id, decision in decisions.items():
        if decision.cluster_id != repoint.old or article_id == repoint.new:
            changed[article_id] = decision
        elif article_id == repoint.old:
            changed[article_id] = replace(decision, cluster_id=repoint.new, duplicate_of=repoint.new,
                                          reason=repoint.reason)
        else:
            changed[article_id] = replace(decision, cluster_id=repoint.new, duplicate_of=repoint.new)
    return changed


# --- the stage ------------------------------------------------------------------------


def _known(row: Row[Any]) -> Known:
    return Known(row.id, row.feed_id, row.cluster_id, row.created_at, row.url, row.content_hash,
                 published=row.published)


class DedupeBatch:
    """One batch of the stage: decide every article in a few queries, then write each.

    ``prepare`` runs once per claimed batch (see ``run_article_stage``): it takes the
    dedupe lock, reads the candidates of all its articles at once (and the texts of those
    worth comparing), decides them in id order (so a batch's own copies link to each other),
    re-points the clusters an earlier copy takes over and writes the index rows. ``decide``
    then gives one article's columns. ``fingerprinted`` (article id -> its ``updated_at`` and
    fingerprint) holds the fingerprints computed before the writing transaction; an article
    written since is fingerprinted again.
    """

    #: What the writing transaction reads of each article; the text comes from ``fingerprinted``.
    columns = (Article.feed_id, Article.url, Article.created_at, Article.published_at, Article.cluster_id,
               Article.content_hash, Article.updated_at)

    def __init__(self, settings: Settings, fingerprinted: dict[int, tuple[datetime, Fingerprint]]) -> None:
        self.threshold = settings.dedupe_threshold
        self.reissue_window = timedelta(days=settings.dedupe_reissue_days)
        self.fingerprinted = fingerprinted
        self.decisions: dict[int, Decision] = {}
        #: Stored articles a re-pointing changed (finished ones wait to be announced again).
        self.changed: list[int] = []

    def _fingerprints(self, session: Session, rows: Sequence[Row[Any]]) -> dict[int, Fingerprint]:
        """Each article's fingerprint: the one computed ahead unless the article was written since."""
        fps = {}
        for row in rows:
            ahead = self.fingerprinted.get(row.id)
            if ahead is not None and ahead[0] == row.updated_at:
                fps[row.id] = ahead[1]
        if stale := [row.id for row in rows if row.id not in fps]:
            for article_id, body in clusters.texts_of(session, stale).items():
                fps[article_id] = fingerprint(body or "")
        return fps

    def prepare(self, session: Session, articles: Sequence[Row[Any]]) -> None:
        if not articles:
            return
        fps = self._fingerprints(session, articles)
        clusters.lock_decisions(session)
        batch_ids = {a.id for a in articles}
        index, canonical_published = self._load_candidates(session, articles, fps, batch_ids)
        now = utcnow()
        repoints = []
        for article in articles:  # in id order
            fp = fps[article.id]
            published = article.published_at or article.created_at or now
            placement = self._place(article, fp, published, index, canonical_published, now)
            self.decisions[article.id] = Decision(fp.content_hash, placement.cluster_id, placement.duplicate_of,
                                                  placement.reason)
            for repoint in placement.repoints:
                repoints.append(repoint)
                self.decisions = repointed(self.decisions, repoint)
                index.repoint(repoint.old, repoint.new)
            canonical_published.setdefault(placement.cluster_id, published)
            index.add(
                Known(article.id, article.feed_id, placement.cluster_id, article.created_at or now, article.url,
                      fp.content_hash if fp.matchable else None, fp.signatures, fp.shingles, published),
                lookup_keys(fp, article.url),
            )
        for repoint in repoints:  # in order: a cluster re-pointed twice in a batch ends at the last
            self.changed += clusters.repoint_cluster(session, repoint.old, repoint.new, repoint.reason, now)
        clusters.write_index(session, {article_id: fp.signatures for article_id, fp in fps.items()})

    def _load_candidates(
        self, session: Session, articles: Sequence[Row[Any]], fps: dict[int, Fingerprint], batch_ids: set[int]
    ) -> tuple[CandidateIndex, dict[int, datetime]]:
        """Every placed article outside the batch sharing a URL or a text with it, or a band key
        and signatures worth comparing (those with their shingles), and when each of their
        clusters' canonical article was published."""
        found: dict[int, Known] = {}
        urls = sorted({u for a in articles if (u := identifying_url(a.url))})
        hashes = sorted({fp.content_hash for fp in fps.values() if fp.matchable and fp.content_hash})
        for row in clusters.placed_with_url_or_hash(session, urls, hashes):
            if row.id not in batch_ids:
                found.setdefault(row.id, _known(row))
        sharing = clusters.band_sharers(session, [key for fp in fps.values() for key in fp.band_keys])
        for batch_id in batch_ids:
            sharing.pop(batch_id, None)
        # Worth comparing: a sharer whose signatures are close enough to those of a batch article
        # it shares a key with. Only those are read further, with their texts in the same query.
        sharers_of_key: dict[int, list[int]] = defaultdict(list)
        for article in articles:
            if fps[article.id].matchable:
                for key in fps[article.id].band_keys:
                    sharers_of_key[key].append(article.id)
        stored = clusters.signatures_of(session, list(sharing))
        pairs = sorted({(batch_id, sharer) for sharer, keys in sharing.items() if sharer in stored
                        for key in keys for batch_id in sharers_of_key.get(key, ())})
        worth = worth_comparing([(fps[batch_id], stored[sharer]) for batch_id, sharer in pairs])
        compare = {sharer for (_, sharer), yes in zip(pairs, worth) if yes}
        for row in clusters.placed_with_texts(session, sorted(compare)):
            known = found.setdefault(row.id, _known(row))
            known.signatures = stored[row.id]
            known.shingles = Shingles.of(word_hashes(words(row.text or "")))
        index = CandidateIndex()
        for article_id, candidate in found.items():
            keys: list[object] = list(sharing.get(article_id, ()))
            if candidate.url:
                keys.append(("url", candidate.url))
            if candidate.content_hash:
                keys.append(("text", candidate.content_hash))
            index.add(candidate, keys)
        canonical_published = {known.id: known.published for known in found.values() if known.cluster_id == known.id}
        unknown = {known.cluster_id for known in found.values()} - set(canonical_published)
        canonical_published |= clusters.published_times(session, sorted(unknown))
        return index, canonical_published

    def _place(
        self, article: Row[Any], fp: Fingerprint, published: datetime, index: CandidateIndex,
        canonical_published: dict[int, datetime], now: datetime,
    ) -> Placement:
        if article.cluster_id == article.id:
            # A canonical article stays canonical through revisions: its copies keep pointing at it.
            return Placement(article.id, None, None)
        found = matches(
            fp, article.url, article.feed_id, index.candidates(lookup_keys(fp, article.url)),
            self.threshold, now - self.reissue_window,
        )
        return place(article.id, published, found, canonical_published)

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


class Deduped(NamedTuple):
    #: The batch's articles ready for classify.
    ready: list[int]
    #: Stored articles outside the batch that it re-pointed at an earlier published copy.
    changed: list[int]


def run_dedupe(settings: Settings, article_ids: Sequence[int]) -> Deduped:
    """Dedupe a batch; return the ids ready for classify and those of stored articles it changed.

    The fingerprints are computed between a read transaction and the writing one: on
    SQLite every transaction holds the one write lock, and on PostgreSQL the dedupe
    lock serialises batches, so other workers would wait while this one hashes.
    """
    with session_scope(settings, read_only=True) as session:
        texts = article_rows(session, article_ids, (Article.text, Article.updated_at), waiting_for=STAGE)
    fingerprinted = {article_id: (updated_at, fingerprint(body or "")) for article_id, body, updated_at in texts}
    batch = DedupeBatch(settings, fingerprinted)
    ready = run_article_stage(settings, STAGE, article_ids, batch.columns, batch.decide, prepare=batch.prepare)
    return Deduped(ready, sorted(set(batch.changed) - set(article_ids)))


@shared_task(base=StageTask, name="feedmill.dedupe")
def dedupe_task(message: dict) -> None:
    deduped = run_dedupe(current_settings(), ArticleBatch.from_message(message).article_ids)
    hand_on_articles(STAGE, deduped.ready)
    announce_changed(deduped.changed)
