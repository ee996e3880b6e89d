"""Dedupe stage: link an article that repeats an earlier one to the first-seen copy.

The same feed and entry never make two rows (parse's unique key does that).
Here, an article from anywhere whose canonical URL or normalized text
matches an earlier article gets ``duplicate_of`` = that first-seen article.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from celery import shared_task
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from schemas.models import Article
from schemas.payloads import ArticleBatch
from schemas.settings import current_settings
from tasks.base import StageTask
from tasks.classify import classify_task
from tasks.store import run_article_stage

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def content_fingerprint(text: str) -> str | None:
    """Hash of the text with case, punctuation and spacing normalized away."""
    normalized = _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    if not normalized:
        return None
    return hashlib.sha256(normalized.encode()).hexdigest()


def apply_dedupe(session: Session, article: Article) -> None:
    """Fingerprint the article and point it at the first earlier copy, if any."""
    article.content_hash = content_fingerprint(article.text or "")
    matches = []
    if article.content_hash:
        matches.append(Article.content_hash == article.content_hash)
    if article.url:
        matches.append(Article.url == article.url)
    if not matches:
        article.duplicate_of = None
        return
    article.duplicate_of = session.scalar(
        select(Article.id)
        .where(
            Article.id < article.id,
            Article.duplicate_of.is_(None),
            Article.stage.in_(("classify", "done")),
            or_(*matches),
        )
        .order_by(Article.id)
        .limit(1)
    )


@shared_task(base=StageTask, name="feedmill.dedupe")
def dedupe_task(message: dict) -> None:
    batch = ArticleBatch.from_message(message)
    ready = run_article_stage(current_settings(), "dedupe", batch.article_ids, apply_dedupe)
    if ready:
        classify_task.delay(ArticleBatch(tuple(ready)).to_message())
