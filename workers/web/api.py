"""The read API under ``/api/v1``: processed articles by change cursor, filters and search;
feeds, story clusters and the pipeline's status. See docs/api.md.

A cursor is opaque to clients: it names a position ``(change_seq, id)`` in the change sequence
(``tasks/storage/changes.py``) and means "after this change". ``0`` is the start of the sequence.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from schemas.db import session_scope
from schemas.settings import Settings
from tasks.storage.articles import article_with_feed_url
from tasks.storage.reading import (
    START,
    ArticleFilter,
    Position,
    article_record,
    best_matches,
    changes_after,
    cluster_members,
    feed_records,
    latest_position,
)
from workers.celery_app import app as celery_app
from workers.status import jsonable, pipeline_status

API_PREFIX = "/api/v1"
DEFAULT_LIMIT, MAX_LIMIT = 100, 500


def encode_cursor(position: Position) -> str:
    if position == START:
        return "0"
    return base64.urlsafe_b64encode(f"{position[0]}.{position[1]}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor names; 422 for a string no answer of this API gave."""
    if cursor == "0":
        return START
    try:
        seq, article_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(".")
        return int(seq), int(article_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(422, f"not a cursor: {cursor!r} (pass back a next_cursor this API returned)") from None


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def require_token(settings: Settings) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """Middleware: with ``FEEDMILL_API_TOKEN`` set, every /api route (OpenAPI included) and every
    published feed (/feeds) wants it as a bearer token, compared in constant time; a feed also
    takes it as ``?token=``, since many feed readers cannot send headers. Other routes pass."""
    expected = f"Bearer {settings.api_token}".encode()

    async def check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if settings.api_token and (_under(path, "/api") or _under(path, "/feeds")):
            given = request.headers.get("authorization", "").encode()
            if _under(path, "/feeds") and "token" in request.query_params:
                given = f"Bearer {request.query_params['token']}".encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse({"detail": "missing or wrong token (Authorization: Bearer <FEEDMILL_API_TOKEN>; "
                                                "a feed also takes ?token=)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    return check


def _page(rows: list[tuple[Any, str]], next_position: Position) -> dict[str, Any]:
    return {"items": [article_record(article, feed_url) for article, feed_url in rows],
            "next_cursor": encode_cursor(next_position)}


def api_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)

    @router.get("/articles", summary="Finished articles in change order, filtered, or searched")
    def list_articles(
        cursor: Annotated[str | None, Query(description="A next_cursor from an earlier answer: only changes after it. "
                                                        "Absent: from the oldest change (or, with q, the best matches).")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        q: Annotated[str | None, Query(description="Full-text search over title and text.")] = None,
        topic: str | None = None,
        place: str | None = None,
        language: str | None = None,
        feed: Annotated[str | None, Query(description="A feed id or URL.")] = None,
        cluster: int | None = None,
        tag: str | None = None,
        since: Annotated[datetime | None, Query(description="Only articles published at or after this time.")] = None,
    ) -> dict[str, Any]:
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        filters = ArticleFilter(q=q or None, topic=topic, place=place, language=language, feed=feed,
                                cluster=cluster, tag=tag, since=since)
        with session_scope(settings, read_only=True) as session:
            if not cursor and filters.q:  # ranked; the cursor then follows later changes
                upto = latest_position(session)
                return _page(best_matches(session, filters, upto, limit), upto)
            after = decode_cursor(cursor) if cursor else START
            rows = changes_after(session, filters, after, limit)
            last = (rows[-1][0].change_seq, rows[-1][0].id) if rows else after
            return _page(rows, last)

    @router.get("/articles/{article_id}", summary="One stored article")
    def get_article(article_id: int) -> dict[str, Any]:
        with session_scope(settings, read_only=True) as session:
            found = article_with_feed_url(session, article_id)
            if found is None:
                raise HTTPException(404, f"no article {article_id}")
            return article_record(*found)

    @router.get("/feeds", summary="Every feed, with its last poll")
    def list_feeds() -> dict[str, Any]:
        with session_scope(settings, read_only=True) as session:
            return {"items": feed_records(session)}

    @router.get("/feeds/{feed_id}", summary="One feed")
    def get_feed(feed_id: int) -> dict[str, Any]:
        with session_scope(settings, read_only=True) as session:
            records = feed_records(session, feed_id)
        if not records:
            raise HTTPException(404, f"no feed {feed_id}")
        return records[0]

    @router.get("/clusters/{cluster_id}", summary="The finished articles of one story cluster")
    def get_cluster(cluster_id: int) -> dict[str, Any]:
        with session_scope(settings, read_only=True) as session:
            members = cluster_members(session, cluster_id)
            if not members:
                raise HTTPException(404, f"no cluster {cluster_id}")
            return {"cluster_id": cluster_id, "size": len(members),
                    "items": [article_record(article, feed_url) for article, feed_url in members]}

    @router.get("/status", summary="What `feedmill status --json` shows")
    def get_status() -> dict[str, Any]:
        return jsonable(pipeline_status(settings, celery_app))

    return router
