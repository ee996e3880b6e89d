"""The clean stage's task: load a batch's entries, clean them, write the articles, hand on.

``run_clean`` reads the waiting entries and drafts them outside any transaction, fetches the
linked pages a summary-only entry wants (``tasks.fulltext``), then cleans and writes the batch
in one ``run_article_stage`` transaction, learning each feed's furniture on the way. The SQL
is in ``tasks.storage.articles`` and ``tasks.storage.furniture``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from celery import shared_task
from sqlalchemy import Row
from sqlalchemy.orm import Session

from schemas.models import Article
from schemas.payloads import ArticleBatch, CleanArticle, RawEntry
from schemas.pipeline import stage_named
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, hand_on_articles
from tasks.clean.entry import Draft, body_chars, draft_entry, draft_with_page, finish_entry
from tasks.clean.furniture import FURNITURE_WINDOW, learn_furniture, paragraph_fingerprints
from tasks.clean.text import plain_text
from tasks.fulltext import MAX_DEFERRALS, Page, PageRound, fetch_pages, wants_page
from tasks.storage.articles import Changes, raw_entries, run_article_stage, waiting_entries
from tasks.storage.furniture import recent_fingerprints, replace_fingerprints

STAGE = stage_named("clean").name


class Planned(NamedTuple):
    """An entry read before the writing transaction, with its draft (None if drafting failed)."""

    entry: RawEntry
    draft: Draft | None


class CleanBatch:
    """One locked batch: drafts every article, learns each feed's furniture in one
    query per feed, records the batch's fingerprints; ``decide`` gives one article's columns.

    ``planned`` holds the entries and drafts read and made before the writing transaction;
    an entry whose ``raw_hash`` has changed since is read again.
    """

    #: What the writing transaction reads of each article; the raw text comes from ``planned``.
    columns = (Article.feed_id, Article.raw_hash, Article.raw_author, Article.published_at)

    def __init__(self, pages: dict[int, Page], planned: dict[int, Planned]) -> None:
        self.pages = pages
        self.planned = planned
        self.results: dict[int, CleanArticle | Exception] = {}

    def prepare(self, session: Session, rows: Sequence[Row[Any]]) -> None:
        stale = [
            row.id for row in rows if (p := self.planned.get(row.id)) is None or p.entry.raw_hash != row.raw_hash
        ]
        if stale:
            for article_id, entry in raw_entries(session, stale).items():
                self.planned[article_id] = Planned(entry, None)
        drafts: dict[int, Draft] = {}
        for row in rows:
            planned = self.planned[row.id]
            page = self.pages.get(row.id)
            try:
                drafts[row.id] = (
                    planned.draft if planned.draft is not None and page is None else draft_with_page(planned.entry, page)
                )
            except Exception as exc:  # recorded on the article by decide, not the batch
                self.results[row.id] = exc
        fingerprints = {article_id: paragraph_fingerprints(draft.blocks) for article_id, draft in drafts.items()}
        feed_of = {row.id: row.feed_id for row in rows}
        by_feed: dict[int, list[int]] = {}
        for article_id in drafts:
            by_feed.setdefault(feed_of[article_id], []).append(article_id)
        for feed_id, ids in by_feed.items():
            recent = recent_fingerprints(session, feed_id, feed_of, FURNITURE_WINDOW)
            furniture = learn_furniture([*recent, *(fingerprints[i] for i in ids)])
            for article_id in ids:
                try:
                    self.results[article_id] = finish_entry(drafts[article_id], furniture)
                except Exception as exc:
                    self.results[article_id] = exc
        replace_fingerprints(session, feed_of, fingerprints)

    def decide(self, row: Row[Any]) -> Changes:
        cleaned = self.results[row.id]
        if isinstance(cleaned, Exception):
            raise cleaned
        page = self.pages.get(row.id)
        changes: Changes = {
            "title": cleaned.title,
            "url": cleaned.url,
            "author": plain_text(row.raw_author) or None,
            "summary": cleaned.summary,
            "text": cleaned.text,
            "html": cleaned.html,
            "images": [image.to_dict() for image in cleaned.images],
            "clean_note": page.note if page else None,
        }
        if row.published_at is None and page is not None:
            changes["published_at"] = page.published_at
        return changes


class CleanStep(NamedTuple):
    """Ids ready for dedupe, and ids deferred (a busy host) with how long to wait."""

    ready: list[int]
    deferred: list[int]
    wait_seconds: float


def plan_pages(settings: Settings, article_ids: Sequence[int]) -> tuple[list[tuple[int, str]], dict[int, Planned]]:
    """(article id, link) of the batch's pending articles whose linked page is wanted, and
    every pending article's entry and draft (by id).

    The drafts are made after the read transaction ends: on SQLite every transaction holds
    the one write lock, which other workers would otherwise wait on while this one parses HTML.
    """
    wanted = []
    planned = {}
    for waiting in waiting_entries(settings, STAGE, article_ids):
        entry = waiting.entry
        try:
            draft = draft_entry(entry)
        except Exception:  # drafted again, and its error recorded, by the stage
            planned[waiting.id] = Planned(entry, None)
            continue
        planned[waiting.id] = Planned(entry, draft)
        mode = waiting.full_text or settings.full_text
        if mode == "off" or not entry.link:
            continue
        if wants_page(mode, body_chars(draft), entry.link, settings.full_text_min_chars):
            wanted.append((waiting.id, entry.link))
    return wanted, planned


def run_clean(settings: Settings, article_ids: Sequence[int], deferrals: int = 0) -> CleanStep:
    """Fetch the pages the batch needs (outside any transaction), then clean the batch."""
    wanted, planned = plan_pages(settings, article_ids)
    pages = fetch_pages(settings, wanted, give_up_waiting=deferrals >= MAX_DEFERRALS) if wanted else PageRound()
    deferred = set(pages.deferred)
    now = [i for i in article_ids if i not in deferred]
    batch = CleanBatch(pages.pages, planned)
    ready = run_article_stage(settings, STAGE, now, batch.columns, batch.decide, prepare=batch.prepare) if now else []
    return CleanStep(ready, pages.deferred, pages.wait_seconds)


@shared_task(base=StageTask, name="feedmill.clean")
def clean_task(message: dict) -> None:
    batch = ArticleBatch.from_message(message)
    deferrals = int(message.get("deferrals", 0))
    step = run_clean(current_settings(), batch.article_ids, deferrals)
    if step.deferred:
        later = ArticleBatch(tuple(step.deferred)).to_message() | {"deferrals": deferrals + 1}
        clean_task.apply_async((later,), countdown=step.wait_seconds)
    hand_on_articles(STAGE, step.ready)

