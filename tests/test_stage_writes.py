"""How the article stages write: only the columns a stage decided, all of a batch in one
executemany, and work done ahead of the writing transaction redone for an article written
in between. On SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from schemas.db import session_scope
from schemas.models import FAILED, PENDING, Article, Failure, utcnow
from schemas.pipeline import article_position_after
from schemas.settings import Settings
from tasks import classify
from tasks.classify import run_classify
from tasks.clean import stage as clean_stage
from tasks.clean.stage import run_clean
from tasks.storage.articles import run_article_stage
from tests.conftest import add_feed

ENGLISH = "The council said the new harbour wall would be finished by spring, after two years of delays and storms."
FRENCH = "Le conseil municipal a annoncé que le nouveau mur du port serait terminé au printemps, après deux ans de retard."


def add_articles(settings: Settings, count: int, **fields: object) -> list[int]:
    feed_id = add_feed(settings, "https://news.example/feed")
    with session_scope(settings) as session:
        articles = [Article(feed_id=feed_id, entry_key=f"k{i}", raw_hash=f"h{i}", **fields) for i in range(count)]
        session.add_all(articles)
        session.flush()
        return [article.id for article in articles]


def revise(settings: Settings, article_id: int, **fields: object) -> None:
    """Another worker's write, as every writer makes it: with a new ``updated_at``."""
    with session_scope(settings) as session:
        session.execute(
            update(Article).where(Article.id == article_id).values(updated_at=utcnow() + timedelta(seconds=1), **fields)
        )


def test_a_write_the_database_refuses_fails_that_article_alone(settings: Settings) -> None:
    ids = add_articles(settings, 3)

    def decide(article) -> dict[str, object]:
        # feed_id is NOT NULL: the batch's executemany fails, then each article is written alone.
        return {"feed_id": None} if article.id == ids[1] else {"title": f"clean {article.entry_key}"}

    assert run_article_stage(settings, "clean", ids, (Article.entry_key,), decide) == [ids[0], ids[2]]
    with session_scope(settings) as session:
        rows = {a.id: a for a in session.scalars(select(Article))}
        failure = session.scalars(select(Failure)).one()
    assert [(rows[i].stage, rows[i].status, rows[i].title) for i in ids] == [
        ("dedupe", PENDING, "clean k0"), ("clean", FAILED, None), ("dedupe", PENDING, "clean k2"),
    ]
    assert rows[ids[1]].feed_id is not None and "IntegrityError" in rows[ids[1]].error
    assert failure.subject == f"article {ids[1]}" and failure.article_ids == [ids[1]]


def test_clean_uses_the_entry_as_it_is_when_written(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry revised between clean's read and its writing transaction is cleaned as revised."""
    [article_id] = add_articles(settings, 1, raw_title="Harbour", raw_content_html=f"<p>{ENGLISH}</p>")
    plan_pages = clean_stage.plan_pages

    def plan_then_revise(*args: object):
        planned = plan_pages(*args)
        revise(settings, article_id, raw_content_html=f"<p>{FRENCH}</p>", raw_hash="revised")
        return planned

    monkeypatch.setattr(clean_stage, "plan_pages", plan_then_revise)
    assert run_clean(settings, [article_id]).ready == [article_id]
    with session_scope(settings) as session:
        assert session.get(Article, article_id).text == FRENCH


@pytest.mark.parametrize("revised", [False, True], ids=["unchanged", "revised"])
def test_classify_labels_the_text_as_it_is_when_written(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, revised: bool
) -> None:
    [article_id] = add_articles(settings, 1, title="Harbour", text=ENGLISH, stage="classify")
    classify_changes = classify.classify_changes
    labelled: list[str] = []

    def label_then_revise(setup, article):
        labelled.append(article.text)
        changes = classify_changes(setup, article)
        if revised and len(labelled) == 1:
            revise(settings, article_id, text=FRENCH)
        return changes

    monkeypatch.setattr(classify, "classify_changes", label_then_revise)
    run_classify(settings, [article_id])
    with session_scope(settings) as session:
        article = session.get(Article, article_id)
    assert (article.stage, article.language) == (article_position_after("classify"), "fr" if revised else "en")
    assert labelled == ([ENGLISH, FRENCH] if revised else [ENGLISH])  # labelled again only when revised
