"""The clean stage's task: load a batch's entries, clean them, write the articles, hand on.

``run_clean`` reads the waiting entries and drafts them outside any transaction, fetches the
linked pages a summary-only entry wants (``tasks.fulltext``) whose hosts are free at once, then
cleans and writes the batch in one ``run_article_stage`` transaction, learning each feed's
furniture on the way. An article whose host is busy goes on with its summary, its page due
(``articles.page_due_at``): the page task ``feedmill.fulltext`` (sent by ``feedmill.fulltext_due``,
periodic) fetches it in its host's turn and cleans the article again with it, so dedupe,
classify and deliver run again (an ``article.updated`` event). The SQL is in
``tasks.storage.articles`` and ``tasks.storage.furniture``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from celery import shared_task
from sqlalchemy import Row
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import Article, utcnow
from schemas.payloads import ArticleBatch, CleanArticle, RawEntry
from schemas.pipeline import stage_named
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, hand_on_articles, send
from tasks.clean.entry import Draft, body_chars, draft_entry, draft_with_page, finish_entry
from tasks.clean.furniture import FURNITURE_WINDOW, learn_furniture, paragraph_fingerprints
from tasks.clean.text import plain_text
from tasks.fulltext import CLEAN_PAGES_BUDGET, GIVE_UP_AFTER, Page, PageRound, fetch_pages, given_up, wants_page
from tasks.storage.articles import (
    Changes,
    back_to_clean_with_page,
    claim_due_pages,
    due_pages,
    pages_due_later,
    raw_entries,
    run_article_stage,
    waiting_entries,
)
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

    def __init__(self, pages: dict[int, Page], planned: dict[int, Planned], page_due: dict[int, datetime]) -> None:
        self.pages = pages
        self.planned = planned
        #: Articles that go on with their summary, and when their page is due.
        self.page_due = page_due
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
            "page_due_at": self.page_due.get(row.id),
        }
        if row.published_at is None and page is not None:
            changes["published_at"] = page.published_at
        return changes


class CleanStep(NamedTuple):
    """Ids ready for dedupe."""

    ready: list[int]


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


def run_clean(settings: Settings, article_ids: Sequence[int], pages: dict[int, Page] | None = None) -> CleanStep:
    """Clean the batch: with ``pages`` (the page task's), those pages; otherwise fetch the pages it
    wants whose hosts are free now (outside any transaction), the others due later."""
    wanted, planned = plan_pages(settings, article_ids)
    page_due: dict[int, datetime] = {}
    if pages is None:
        fetched = fetch_pages(settings, wanted, slot_wait=0.0, budget=CLEAN_PAGES_BUDGET) if wanted else PageRound()
        pages = fetched.pages
        due = utcnow() + timedelta(seconds=fetched.wait_seconds)
        page_due = {article_id: due for article_id in fetched.deferred}
    batch = CleanBatch(pages, planned, page_due)
    ready = run_article_stage(settings, STAGE, article_ids, batch.columns, batch.decide, prepare=batch.prepare)
    return CleanStep(ready)


@shared_task(base=StageTask, name="feedmill.clean")
def clean_task(message: dict) -> None:
    hand_on_articles(STAGE, run_clean(current_settings(), ArticleBatch.from_message(message).article_ids).ready)


# ------------------------------------------------------------------ pages later

#: Due pages looked at per look of ``fulltext_due``, and sent per host (one page task a host).
DUE_PAGES_LIMIT, PAGES_PER_HOST = 5000, 20


def run_page_fetches(settings: Settings, article_ids: Sequence[int]) -> list[int]:
    """Fetch the due pages of these articles in their hosts' turns, for about one look of
    ``fulltext_due`` (so page tasks of one host hardly overlap), and clean those articles again
    with them; a page still waiting for its host stays due. Return the ids ready for dedupe."""
    now = utcnow()
    budget = settings.full_text_every
    with session_scope(settings) as session:
        claimed = claim_due_pages(session, article_ids, now, lease=budget + 60.0)
    stale = {page.id: given_up(page.link) for page in claimed if now - page.created_at > GIVE_UP_AFTER}
    fetched = fetch_pages(settings, [(page.id, page.link) for page in claimed if page.id not in stale], budget=budget)
    pages = fetched.pages | stale
    with session_scope(settings) as session:
        pages_due_later(session, fetched.deferred, utcnow() + timedelta(seconds=fetched.wait_seconds))
        again = back_to_clean_with_page(session, sorted(pages))
    if not again:
        return []
    return run_clean(settings, again, {article_id: pages[article_id] for article_id in again}).ready


@shared_task(base=StageTask, name="feedmill.fulltext")
def fulltext_task(message: dict) -> None:
    hand_on_articles(STAGE, run_page_fetches(current_settings(), ArticleBatch.from_message(message).article_ids))


@shared_task(base=StageTask, name="feedmill.fulltext_due")
def fulltext_due_task() -> int:
    """Periodic (celery beat, every FEEDMILL_FULL_TEXT_EVERY s): one page task per host with pages
    due, the longest waiting first; what a task cannot fetch in its turn is due again later."""
    with session_scope(current_settings(), read_only=True) as session:
        due = due_pages(session, utcnow(), DUE_PAGES_LIMIT)
    by_host: dict[str, list[int]] = {}
    for article_id, link in due:
        by_host.setdefault(urlsplit(link).hostname or "", []).append(article_id)
    for ids in by_host.values():
        send("fulltext", ArticleBatch(tuple(ids[:PAGES_PER_HOST])).to_message())
    return len(by_host)
