"""The dedupe stage, layer by layer: pure functions first, then the SQL side on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from schemas.db import session_scope
from schemas.models import PENDING, Article, MinhashBand, MinhashSignature, utcnow
from schemas.settings import Settings
from tasks.clean.stage import run_clean
from tasks.dedupe import (
    LEAD,
    NEAR,
    REISSUE,
    TEXT,
    URL,
    Decision,
    Known,
    Match,
    Placement,
    Repoint,
    band_keys,
    content_fingerprint,
    copy_measures,
    fingerprint,
    jaccard_estimate,
    lead_words,
    matches,
    minhash,
    place,
    worth_comparing,
    repointed,
    run_dedupe,
    words,
)
from tasks.parse import parse_document, raw_entries, reuses_guid, store_entries
from tasks.storage.clusters import BANDS, BANDS_BEFORE_0016
from tests.conftest import ROOT, add_feed, feedmill, make_settings, ok, rss


def best_match(*args: object) -> Match | None:
    """The article a text repeats, or None: the first of ``matches``."""
    found = matches(*args)  # type: ignore[arg-type]
    return found[0] if found else None


_rng = random.Random(11)
_VOCABULARY = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "tu") for b in range(60)]


def story(words_count: int = 200, seed: int | None = None) -> str:
    """A made-up article: random words, so two stories share next to nothing."""
    rng = random.Random(seed) if seed is not None else _rng
    return " ".join(rng.choice(_VOCABULARY) for _ in range(words_count)) + "."


def edited(text: str, seed: int = 1) -> str:
    """Another outlet's copy: dateline, last fifth cut, 5% of words changed, footer."""
    rng = random.Random(seed)
    tokens = text.split()
    tokens = tokens[: len(tokens) * 4 // 5]
    for i in rng.sample(range(len(tokens)), len(tokens) // 20):
        tokens[i] = "changed"
    return "PARIS (Wire) - " + " ".join(tokens) + " Reporting by Wire staff."


def exact_jaccard(a: str, b: str, size: int) -> float:
    def shingles(text: str) -> set[tuple[str, ...]]:
        w = words(text)
        return {tuple(w[i : i + size]) for i in range(len(w) - size + 1)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


# --- pure functions ---------------------------------------------------------------


def test_content_fingerprint_ignores_case_punctuation_and_spacing() -> None:
    assert content_fingerprint("Hello,  World!\n\nBye.") == content_fingerprint("hello world bye")
    assert content_fingerprint("Hello world") != content_fingerprint("Hello world again")
    assert content_fingerprint(" ... ") is None


def test_texts_get_a_2_word_shingle_and_a_lead_signature_and_tiny_ones_none() -> None:
    assert set(fingerprint(story(30)).signatures) == set(fingerprint(story(300)).signatures) == {2, LEAD}
    assert fingerprint("Watch the video").signatures == {}
    assert not fingerprint("Watch the video").matchable


def test_minhash_estimates_jaccard() -> None:
    original = story(400)
    for copy in (original, edited(original), story(400)):
        a, b = fingerprint(original), fingerprint(copy)
        assert abs(jaccard_estimate(a.signatures[2], b.signatures[2]) - exact_jaccard(original, copy, 2)) < 0.12


def test_band_keys_are_the_same_in_every_process() -> None:
    text = story(100, seed=3)
    here = fingerprint(text).band_keys
    code = f"from tasks.dedupe import fingerprint; print(fingerprint({text!r}).band_keys)"
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=ROOT,
    ).stdout
    assert there.strip() == str(here)


#: Signatures and band keys computed by the code that built existing indexes (sha256 of their
#: bytes): a faster fingerprint must reproduce them bit for bit, or stored rows stop matching.
#: Per text: its signatures by kind (kind 3, 3-word shingles, as stored until migration 0016);
#: the band keys of the kinds stored before issue 24 (2- and 3-word shingles, 2 only under 80
#: words, 42 bands each); all its band keys now (32 bands of its 2-word shingles, 20 of its lead).
_PINNED = {
    "Ministers said on Tuesday that the Café's new tax rules, set out in 2024, would cost £3bn a year.": (
        {2: "f29291bf725bdd79e8f583421aaba08a232febfb79b4c9da66b931f466e86147",
         3: "6aeb70e039b32a05a336f2231fb57813f0c9fc312030e963e31428f9a067c4d3",
         LEAD: "3a33b3a1f499f959f9e392a081fee71de7c1ca1b044af6b7ec672b4ceaf044b0"},
        ((2, 3), "648d57c032ad66e907c6bd802fbee2e4e3d97842a412419e1e4a32182aa6ede0"),
        "c2970f7306353d821e238e51cbb3af2c2fc6145d0544551214dcb41c509f4450",
    ),
    " ".join(f"word{i % 37} Zeitung_{i % 11} ÉCOLE{i % 5}" for i in range(120)): (
        {2: "08604982fe2f88c6f59e61c87072fd7a85d2725a3b4fee4bf78c53b17a775ada",
         3: "c916776621883fb7d2976b8e6bf56eb3216994727baaaaacc85b26574d263fd4",
         LEAD: "ed2c65acb108ba7e4119082b084851f5492b450e753274881998e5262f2771fa"},
        ((3,), "aeb3ee2faa9fb7f80224af1dffe172dc306f47cada932119c05021f4e23caa70"),
        "de9735f46ed9f3a7871384ff37ed7b226f4120be0687f3013e8946113fa467b1",
    ),
    "The fox's 'quick' jump — ﬁne ① Ｆｕｌｌ width, straße & STRASSE; naïve coöperation " * 6: (
        {2: "5231f239bc24f8ec655b668022c4bfb878b908596c19ef95fef29806da02f603",
         3: "c8402cd7098344cc11b536c89580f302b7de8d099433a8e0020ca7f501e4801b",
         LEAD: "95cd7c84e8154a07086d9cea6bd66f26f936c8598046f4d5a89901845c26f022"},
        ((2, 3), "08ec8d98c819b522e19d59500570317aa16819711e2fa320d2efb99efe624fc1"),
        "30b9400219516edf0fd238a6c05dd9c089c0a3cf5adc62373560d0edaac91969",
    ),
}


def _sha(keys: list[int]) -> str:
    return hashlib.sha256(np.array(keys, dtype=np.int64).tobytes()).hexdigest()


@pytest.mark.parametrize("text", list(_PINNED))
def test_signatures_and_band_keys_match_the_stored_index(text: str) -> None:
    signatures, (old_kinds, old_bands), bands = _PINNED[text]
    fp = fingerprint(text)
    stored_before_0016 = {**fp.signatures, 3: minhash(fp.shingles.sequence)}  # 3-word shingles, gone since
    assert {kind: hashlib.sha256(sig.tobytes()).hexdigest() for kind, sig in stored_before_0016.items()} == signatures
    assert _sha([key for kind in old_kinds
                 for key in band_keys(stored_before_0016[kind], kind, BANDS_BEFORE_0016)]) == old_bands
    # Today's rows are rows of the old index: its first BANDS 2-word bands, and the lead's.
    assert fp.band_keys == band_keys(fp.signatures[2], 2, BANDS_BEFORE_0016)[:BANDS] + band_keys(fp.signatures[LEAD], LEAD)
    assert _sha(fp.band_keys) == bands


def test_band_keys_collide_for_copies_and_differ_by_shingle_size() -> None:
    text = story(300)
    original, copy, other = fingerprint(text), fingerprint(edited(text)), fingerprint(story(300))
    assert set(original.band_keys) & set(copy.band_keys)
    assert not set(original.band_keys) & set(other.band_keys)
    signature = original.signatures[2]
    assert set(band_keys(signature, 2)).isdisjoint(band_keys(signature, LEAD))


def _known(id: int, text: str = "", *, feed_id: int = 1, url: str | None = None, age_days: float = 0) -> Known:
    fp = fingerprint(text)
    return Known(id, feed_id, id, utcnow() - timedelta(days=age_days), url,
                 fp.content_hash if fp.matchable else None, fp.signatures, fp.shingles)


def test_best_match_prefers_url_then_text_then_near_duplicate() -> None:
    text = story(200)
    since = utcnow() - timedelta(days=7)
    fp = fingerprint(text)
    near, same_text, same_url = _known(1, edited(text), feed_id=2), _known(2, text, feed_id=3), _known(3, feed_id=4, url="https://a.org/x")
    assert best_match(fp, "https://a.org/x", 9, [near, same_text, same_url], 0.4, since).reason == URL
    assert best_match(fp, "https://a.org/y", 9, [near, same_text], 0.4, since).known.id == 2
    match = best_match(fp, None, 9, [near], 0.4, since)
    assert match.reason == NEAR and 0.4 <= match.similarity < 1
    assert best_match(fp, None, 9, [_known(4, story(200), feed_id=2)], 0.4, since) is None
    assert best_match(fp, None, 9, [near], 0.99, since) is None


def test_best_match_joins_the_oldest_cluster_and_ignores_front_page_urls() -> None:
    text = story(200)
    fp = fingerprint(text)
    since = utcnow() - timedelta(days=7)
    later, first = _known(8, edited(text, seed=5), feed_id=2), _known(5, edited(text, seed=6), feed_id=3)
    assert best_match(fp, None, 9, [later, first], 0.4, since).known.id == 5
    front_page = _known(6, story(200), feed_id=2, url="https://a.org/")
    assert best_match(fp, "https://a.org/", 9, [front_page], 0.4, since) is None


def test_a_same_feed_repeat_is_a_reissue_only_while_recent() -> None:
    text = story(200)
    fp = fingerprint(edited(text))
    since = utcnow() - timedelta(days=7)
    assert best_match(fp, None, 1, [_known(1, text, feed_id=1, age_days=2)], 0.4, since).reason == REISSUE
    assert best_match(fp, None, 1, [_known(1, text, feed_id=1, age_days=30)], 0.4, since).reason == NEAR


def test_short_identical_texts_are_not_duplicates_by_content() -> None:
    fp = fingerprint("Watch the video")
    assert best_match(fp, None, 9, [_known(1, "Watch the video")], 0.4, utcnow()) is None


# --- the stage on a database ----------------------------------------------------------






def add_article(settings: Settings, feed_id: int, text: str, url: str | None = None, age_days: float = 0,
                published: datetime | None = None) -> int:
    """An article as the clean stage leaves it: waiting for dedupe."""
    created = utcnow() - timedelta(days=age_days)
    with session_scope(settings) as session:
        article = Article(
            feed_id=feed_id, entry_key=f"k{_rng.random()}", raw_hash="-", text=text, url=url, title="t",
            stage="dedupe", status=PENDING, created_at=created, updated_at=created, published_at=published,
        )
        session.add(article)
        session.flush()
        return article.id


def updated_at(settings: Settings, *ids: int) -> list[datetime]:
    with session_scope(settings) as session:
        return [session.get(Article, i).updated_at for i in ids]


def rows(settings: Settings, *ids: int) -> list[tuple]:
    with session_scope(settings) as session:
        return [
            tuple(session.execute(
                select(Article.duplicate_of, Article.cluster_id, Article.duplicate_reason).where(Article.id == i)
            ).one())
            for i in ids
        ]


def test_same_url_or_same_text_elsewhere_links_to_the_first_seen(settings: Settings) -> None:
    a, b, c = (add_feed(settings, f"https://{n}.example/feed") for n in "abc")
    text = story(150)
    first = add_article(settings, a, text, url="https://news.example/story-1")
    by_url = add_article(settings, b, "A different teaser for the same page, long enough to count as a text.", url="https://news.example/story-1")
    by_text = add_article(settings, c, text.upper(), url="https://other.example/s1")
    other = add_article(settings, c, story(150), url="https://other.example/s2")
    assert run_dedupe(settings, [first, by_url, by_text, other]).ready == [first, by_url, by_text, other]
    assert rows(settings, first, by_url, by_text, other) == [
        (None, first, None), (first, first, URL), (first, first, TEXT), (None, other, None)
    ]


def test_near_duplicates_join_the_cluster_in_later_batches(settings: Settings) -> None:
    a, b, c = (add_feed(settings, f"https://{n}.example/feed") for n in "abc")
    text = story(300)
    first = add_article(settings, a, text)
    run_dedupe(settings, [first])
    copy = add_article(settings, b, edited(text, seed=2))
    copy_of_copy = add_article(settings, c, edited(edited(text, seed=2), seed=3))
    unrelated = add_article(settings, c, story(300))
    run_dedupe(settings, [copy, copy_of_copy, unrelated])
    assert rows(settings, copy, copy_of_copy, unrelated) == [
        (first, first, NEAR), (first, first, NEAR), (None, unrelated, None)
    ]
    with session_scope(settings) as session:  # the index is in SQL: every worker and host sees it
        assert session.scalar(select(func.count()).select_from(MinhashSignature)) == 4 * 2
        assert session.scalar(select(func.count()).select_from(MinhashBand)) == 4 * (32 + 20)


def test_a_new_guid_for_a_recent_entry_of_the_same_feed_is_a_reissue(settings: Settings) -> None:
    feed, other = add_feed(settings, "https://a.example/feed"), add_feed(settings, "https://b.example/feed")
    text, old_text = story(200), story(200)
    recent = add_article(settings, feed, text, age_days=1)
    old = add_article(settings, feed, old_text, age_days=40)
    run_dedupe(settings, [recent, old])
    reissued = add_article(settings, feed, edited(text))
    evergreen = add_article(settings, feed, edited(old_text))
    elsewhere = add_article(settings, other, edited(text, seed=4))
    run_dedupe(settings, [reissued, evergreen, elsewhere])
    assert rows(settings, reissued, evergreen, elsewhere) == [
        (recent, recent, REISSUE), (old, old, NEAR), (recent, recent, NEAR)
    ]


def test_the_canonical_is_the_earliest_published_copy_whatever_the_arrival_order(settings: Settings) -> None:
    """Copies deduped before their original, and in an order of their own: when the earlier copy
    arrives, the cluster is re-pointed at it (stored copies rewritten, ``updated_at`` moved); a
    tie keeps the first seen; an article that repeats two clusters unites them."""
    a, b, c, d = (add_feed(settings, f"https://{n}.example/feed") for n in "abcd")
    text = story(300)
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    later_copy = add_article(settings, b, edited(text, seed=2), published=noon + timedelta(hours=2))
    run_dedupe(settings, [later_copy])
    tie = add_article(settings, c, edited(text, seed=3), published=noon + timedelta(hours=2))
    run_dedupe(settings, [tie])
    assert rows(settings, later_copy, tie) == [(None, later_copy, None), (later_copy, later_copy, NEAR)]
    before = updated_at(settings, later_copy, tie)

    original = add_article(settings, a, text, published=noon)
    run_dedupe(settings, [original])
    assert rows(settings, original, later_copy, tie) == [
        (None, original, None), (original, original, NEAR), (original, original, NEAR)
    ]
    assert all(after > then for after, then in zip(updated_at(settings, later_copy, tie), before))

    # A teaser of another story, then that story in full published earlier than both: one cluster.
    other = story(300)
    teaser = add_article(settings, d, other[:200] + "\n\nRead the full story at Outlet D.", published=noon)
    run_dedupe(settings, [teaser])
    assert rows(settings, teaser) == [(None, teaser, None)]
    full = add_article(settings, c, other, published=noon - timedelta(hours=1))
    run_dedupe(settings, [full])
    assert rows(settings, full, teaser, original) == [(None, full, None), (full, full, NEAR), (None, original, None)]


def test_placing_names_the_earliest_published_and_unites_clusters() -> None:
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    one, two = _known(10, story(50)), _known(20, story(50))
    one.cluster_id, two.cluster_id = 10, 20
    published = {10: noon, 20: noon + timedelta(hours=1)}
    near_one, near_two = Match(one, NEAR, 0.8), Match(two, NEAR, 0.7)
    assert place(30, noon + timedelta(hours=2), [], published) == Placement(30, None, None)
    assert place(30, noon + timedelta(hours=2), [near_one], published) == Placement(10, 10, NEAR)
    assert place(30, noon, [near_one], published) == Placement(10, 10, NEAR)  # a tie keeps the first seen
    assert place(30, noon - timedelta(minutes=1), [near_one], published) == Placement(
        30, None, None, (Repoint(10, 30, NEAR),))
    assert place(30, noon + timedelta(hours=2), [near_two, near_one], published) == Placement(
        10, 10, NEAR, (Repoint(20, 10, NEAR),))
    assert place(30, noon - timedelta(hours=1), [Match(one, REISSUE, 0.9)], published) == Placement(10, 10, REISSUE)
    decisions = {10: Decision("h", 10, None, None), 11: Decision("i", 10, 10, URL), 30: Decision("j", 30, None, None)}
    assert repointed(decisions, Repoint(10, 30, NEAR)) == {
        10: Decision("h", 30, 30, NEAR), 11: Decision("i", 30, 30, URL), 30: Decision("j", 30, None, None)
    }


def test_containment_finds_teasers_updates_and_changed_words_but_not_follow_ups() -> None:
    """The exact check: copies contained in the other text, with the shared shingles spread through it."""
    paragraphs = [story(40, seed=n) for n in range(8)]
    full = "\n\n".join(paragraphs)
    fp = fingerprint(full)
    rng = random.Random(4)
    changed = [w if rng.random() > 0.15 else "swapped" for w in full.split(" ")]
    copies = {
        "teaser": paragraphs[0] + "\n\nRead the full story at Outlet.",
        "update": full + "\n\n" + story(40, seed=20) + "\n\n" + story(40, seed=21),
        "15% of words": " ".join(changed),
    }
    since = utcnow() - timedelta(days=7)
    for kind, text in copies.items():
        match = best_match(fp, None, 9, [_known(1, text)], 0.5, since)
        assert match is not None and match.reason == NEAR, kind
        assert fingerprint(text).band_keys and set(fingerprint(text).band_keys) & set(fp.band_keys), kind
    # A follow-up quoting four of the eight paragraphs whole: contained by half, not spread.
    follow_up = "\n\n".join(paragraphs[:4] + [story(40, seed=30 + n) for n in range(4)])
    assert copy_measures(fp.shingles, fingerprint(follow_up).shingles)[2] < 0.9
    assert best_match(fp, None, 9, [_known(1, follow_up)], 0.5, since) is None
    # The teaser's lead signature is the full story's.
    assert lead_words(copies["teaser"]) == lead_words(full) == words(paragraphs[0])


def test_redelivered_batch_changes_nothing(settings: Settings) -> None:
    feed = add_feed(settings, "https://a.example/feed")
    text = story(200)
    ids = [add_article(settings, feed, text), add_article(settings, feed, edited(text))]
    assert run_dedupe(settings, ids).ready == ids
    before = rows(settings, *ids)
    assert run_dedupe(settings, ids).ready == ids  # still handed on to classify, nothing rewritten
    assert rows(settings, *ids) == before
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(MinhashSignature)) == 2 * 2


def test_fingerprints_are_computed_outside_the_write_lock(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other workers can write while a batch hashes; a text changed meanwhile is hashed again."""
    settings = sqlite_settings
    feed, other_feed = add_feed(settings, "https://a.example/feed"), add_feed(settings, "https://b.example/feed")
    text = story(200)
    first = add_article(settings, feed, text)
    run_dedupe(settings, [first])
    later = add_article(settings, other_feed, story(200))
    path = make_url(settings.database_url).database
    lock_was_free: dict[str, bool] = {}

    def fingerprint_and_probe(article_text: str):
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # raises "database is locked" while a writer holds it
            if not lock_was_free:  # the batch's read is done: the article is revised now (as every writer does, with its time)
                other.execute("UPDATE articles SET text = ?, updated_at = '2099-01-01 00:00:00.000000' WHERE id = ?",
                              (edited(text), later))
            other.execute("COMMIT")
            lock_was_free[article_text] = True
        except sqlite3.OperationalError:
            lock_was_free[article_text] = False
        finally:
            other.close()
        return fingerprint(article_text)

    monkeypatch.setattr("tasks.dedupe.fingerprint", fingerprint_and_probe)
    assert run_dedupe(settings, [later]).ready == [later]
    assert list(lock_was_free.values()) == [True, False]  # the read text, then the revised one inside
    assert rows(settings, later) == [(first, first, NEAR)]
    with session_scope(settings) as session:
        assert session.get(Article, later).content_hash == content_fingerprint(edited(text))


def band_rows(settings: Settings) -> dict[int, set[int]]:
    """Every stored band key, by article."""
    with session_scope(settings) as session:
        found: dict[int, set[int]] = {}
        for key, article_id in session.execute(select(MinhashBand.band_key, MinhashBand.article_id)):
            found.setdefault(article_id, set()).add(key)
        return found


def signature_rows(settings: Settings) -> dict[int, set[int]]:
    """The shingle sizes of every stored signature, by article."""
    with session_scope(settings) as session:
        found: dict[int, set[int]] = {}
        for article_id, size in session.execute(select(MinhashSignature.article_id, MinhashSignature.shingle_words)):
            found.setdefault(article_id, set()).add(size)
        return found


def revise(settings: Settings, article_id: int, text: str) -> None:
    """A revision as parse and clean leave it: new text, waiting for dedupe again."""
    with session_scope(settings) as session:
        article = session.get(Article, article_id)
        article.text, article.revision, article.stage, article.status = text, article.revision + 1, "dedupe", PENDING


def test_a_revision_replaces_exactly_its_band_rows(settings: Settings) -> None:
    """minhash_bands has no index on article_id: a revised article's old rows are found from its
    stored signatures (every kind: 2-word shingles and the lead)."""
    feed = add_feed(settings, "https://a.example/feed")
    short, long = story(40), story(300)
    revised, other = add_article(settings, feed, short), add_article(settings, feed, story(300))
    run_dedupe(settings, [revised, other])
    before = band_rows(settings)
    assert before[revised] == set(fingerprint(short).band_keys) and len(before[revised]) == 32 + 20
    assert signature_rows(settings)[revised] == {2, LEAD}

    revise(settings, revised, long)
    fresh = add_article(settings, feed, story(300))  # in the same batch, never deduped before
    assert run_dedupe(settings, [revised, fresh]).ready == [revised, fresh]
    after = band_rows(settings)
    assert after == {
        revised: set(fingerprint(long).band_keys), other: before[other], fresh: after[fresh]
    }
    assert after[revised].isdisjoint(before[revised]) and len(after[fresh]) == 32 + 20
    assert signature_rows(settings) == {revised: {2, LEAD}, other: {2, LEAD}, fresh: {2, LEAD}}


def test_removing_a_feed_removes_its_band_rows_and_signatures(settings: Settings) -> None:
    """No cascade removes band rows (migration 0008): ``feeds remove`` deletes them itself."""
    gone_url, kept_url = "https://gone.example/feed", "https://kept.example/feed"
    gone, kept = add_feed(settings, gone_url), add_feed(settings, kept_url)
    text = story(300)
    removed = [add_article(settings, gone, text), add_article(settings, gone, story(40))]
    kept_ids = [add_article(settings, kept, edited(text)), add_article(settings, kept, story(300))]
    run_dedupe(settings, removed)
    run_dedupe(settings, kept_ids)
    assert rows(settings, kept_ids[0]) == [(removed[0], removed[0], NEAR)]
    bands_before, signatures_before = band_rows(settings), signature_rows(settings)
    assert set(bands_before) == set(signatures_before) == {*removed, *kept_ids}

    ok(feedmill(settings, "feeds", "remove", gone_url, "--yes"))
    assert band_rows(settings) == {i: bands_before[i] for i in kept_ids}
    assert signature_rows(settings) == {i: signatures_before[i] for i in kept_ids}


def _parse_and_clean(settings: Settings, feed_id: int, document: str) -> list[int]:
    from tasks.parse import parse_document

    entries = parse_document(document.encode(), None, None).entries
    with session_scope(settings) as session:
        new_ids, changed_ids = store_entries(session, feed_id, None, entries)
    ids = sorted(new_ids + changed_ids)
    run_clean(settings, ids)
    return ids


def test_revisions_keep_count_and_previous_hash_and_first_seen_stays_first(settings: Settings) -> None:
    """Layer 1: a changed entry is the same row, revision + 1, deduped again."""
    a, b = add_feed(settings, "https://a.example/feed"), add_feed(settings, "https://b.example/feed")
    text = story(200)
    item = {"title": "Story", "guid": "g1", "description": text}
    (head,) = _parse_and_clean(settings, a, rss([item]))
    run_dedupe(settings, [head])
    (copy,) = _parse_and_clean(settings, b, rss([{"title": "Copy", "guid": "c1", "description": edited(text)}]))
    run_dedupe(settings, [copy])
    assert _parse_and_clean(settings, a, rss([item])) == []  # an unchanged repeat stores nothing

    # The first-seen article is corrected: it stays its story's first-seen.
    assert _parse_and_clean(settings, a, rss([{**item, "description": text + " Correction appended."}])) == [head]
    run_dedupe(settings, [head])
    # The copy is rewritten into another story: it leaves the cluster.
    assert _parse_and_clean(settings, b, rss([{"title": "Copy", "guid": "c1", "description": story(200)}])) == [copy]
    run_dedupe(settings, [copy])
    with session_scope(settings) as session:
        first, second = session.get(Article, head), session.get(Article, copy)
        assert (first.revision, first.cluster_id, first.duplicate_of) == (2, head, None)
        assert first.previous_content_hash == content_fingerprint(text) != first.content_hash
        assert (second.revision, second.cluster_id, second.duplicate_of) == (2, copy, None)
        assert session.scalar(select(func.count()).select_from(MinhashSignature)) == 2 * 2


def test_a_feed_repeating_one_guid_keeps_its_items_apart(sqlite_settings: Settings) -> None:
    """Layer 1: entries sharing a GUID fall back to their links, each its own article."""
    entries = raw_entries([
        {"id": "same", "link": "https://e.org/a", "title": "A"},
        {"id": "same", "link": "https://e.org/b", "title": "B"},
    ])
    assert [e.entry_key for e in entries] == ["link:https://e.org/a", "link:https://e.org/b"]


def test_a_feed_reusing_one_guid_across_polls_keeps_its_items_apart(sqlite_settings: Settings) -> None:
    """Layer 1: one item per document, always the same GUID: each poll's item is its own article,
    its repeat stores nothing, and a revision (one of link or title changed) stays one row."""
    feed = add_feed(sqlite_settings, "https://a.example/feed")

    def poll(title: str, link: str) -> tuple[list[int], list[int]]:
        document = rss([{"title": title, "guid": "always-the-same", "link": link, "description": f"The text of {link}."}])
        entries = parse_document(document.encode(), None, None).entries
        with session_scope(sqlite_settings) as session:
            return store_entries(session, feed, None, entries)

    (first,), _ = poll("Monday's story", "https://a.example/monday")
    (second,), _ = poll("Tuesday's story", "https://a.example/tuesday")
    assert second != first
    assert poll("Tuesday's story", "https://a.example/tuesday") == ([], [])
    assert poll("Monday's story, corrected", "https://a.example/monday") == ([], [first])
    with session_scope(sqlite_settings) as session:
        keys = {row.id: row.entry_key for row in session.execute(select(Article.id, Article.entry_key))}
    assert keys == {first: "guid:always-the-same", second: "link:https://a.example/tuesday"}


def test_reuses_guid_needs_both_link_and_title_changed() -> None:
    entry = raw_entries([{"id": "g", "link": "https://e.org/b", "title": "B"}])[0]
    assert reuses_guid("https://e.org/a", "A", entry)
    assert not reuses_guid("https://e.org/b", "A", entry)  # a new headline: a revision
    assert not reuses_guid("https://e.org/a", "B", entry)  # a new link: a revision
    assert not reuses_guid(None, "A", entry)


def test_settings_tune_the_threshold(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEEDMILL_DEDUPE_THRESHOLD", "0.9")
    monkeypatch.setenv("FEEDMILL_DEDUPE_REISSUE_DAYS", "2")
    settings = make_settings(tmp_path)
    assert (settings.dedupe_threshold, settings.dedupe_reissue_days) == (0.9, 2.0)


def test_only_pairs_whose_signatures_come_close_are_worth_comparing():
    """One signature kind estimated at 0.2 or more is enough; a kind one side lacks counts for nothing."""
    fp = fingerprint(" ".join(f"word{i}" for i in range(120)))
    same = dict(fp.signatures)
    far = {kind: sig + 1 for kind, sig in fp.signatures.items()}
    lead_only = {**far, LEAD: fp.signatures[LEAD]}
    close = {}
    for kind, sig in fp.signatures.items():  # a quarter of the values equal: an estimate of 0.25
        near = sig + 1
        near[: len(sig) // 4] = sig[: len(sig) // 4]
        close[kind] = near
    below = {kind: np.where(np.arange(len(sig)) < len(sig) // 10, sig, sig + 1) for kind, sig in fp.signatures.items()}
    lead_missing = {kind: sig for kind, sig in far.items() if kind != LEAD}  # its lead alone came close
    assert worth_comparing([(fp, same), (fp, far), (fp, lead_only), (fp, close), (fp, below), (fp, lead_missing), (fp, {})]).tolist() == [
        True, False, True, True, False, False, False,
    ]
    assert worth_comparing([]).tolist() == []
