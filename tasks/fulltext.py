"""Full text for summary-only entries: fetch the linked page politely, extract its article.

Part of the clean stage. ``fetch_page`` obeys the rules feed fetches obey
(``check_url_allowed`` and ``check_connected_address`` on every redirect hop,
the body cap, the timeouts and the whole-fetch deadline); ``fetch_pages``
takes a per-host slot (``tasks.storage.hosts``) for each page and, rather than block
a worker on a busy host, leaves the page for later: clean goes on with the summary, and the page
task (``feedmill.fulltext``) fetches it in its host's turn and cleans the article again.
``extract_page`` is pure: trafilatura finds the main text and the page's date.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from schemas.db import session_scope
from schemas.settings import Settings
from tasks.http import safe_get
from tasks.storage.hosts import SlotClaim, claim_host_slot, free_host_slot

FULL_TEXT_MODES = ("on", "off", "auto")
PAGE_ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"
#: The page task waits for a busy host this long at most per page; beyond it the page is left for later.
SLOT_WAIT_LIMIT = 2.0
#: One page task spends at most this long fetching pages; the rest are left for later.
PAGES_BUDGET = 30.0
#: The clean stage fetches a page only if its host's slot is free at once, and spends at most
#: this long on pages: a slow host never holds an article back (it goes on with its summary).
CLEAN_PAGES_BUDGET = 10.0
#: A page wanted this long after its article was stored is given up: the article keeps its summary.
GIVE_UP_AFTER = timedelta(days=1)
NOTE_LIMIT = 300


@dataclass(frozen=True)
class Page:
    """A linked page's article (``html``), or a ``note`` saying why there is none."""

    url: str
    html: str | None = None
    title: str | None = None
    published_at: datetime | None = None
    note: str | None = None


@dataclass
class PageRound:
    """The pages one task fetched (or gave up, with a note), and the articles whose pages must
    wait for their host's turn, with how long at least."""

    pages: dict[int, Page] = field(default_factory=dict)
    deferred: list[int] = field(default_factory=list)
    wait_seconds: float = 0.0


def wants_page(mode: str, body_chars: int, link: str | None, min_chars: int) -> bool:
    """Whether an entry's page should be fetched: ``on``, or ``auto`` and the body is short."""
    if not link or urlsplit(link).scheme.lower() not in ("http", "https"):
        return False
    return mode == "on" or (mode == "auto" and body_chars < min_chars)


def fetch_page(url: str, settings: Settings) -> tuple[str, bytes | None, str | None]:
    """GET an HTML page: (final URL, body, None) or (URL, None, error). Never raises."""
    answer = safe_get(url, settings, {"Accept": PAGE_ACCEPT})
    if answer.error is not None:
        return answer.url, None, answer.error
    if answer.status_code != 200:
        return answer.url, None, f"HTTP {answer.status_code} {answer.reason}".strip()
    content_type = answer.headers.get("content-type", "text/html").lower()
    if "html" not in content_type:
        return answer.url, None, f"not an HTML page ({content_type.split(';')[0]})"
    return answer.url, answer.body, None


def extract_page(body: bytes | str, url: str) -> Page:
    """The main text of a web page as HTML, with its title and date (trafilatura)."""
    # Imported here: trafilatura takes 0.2 s to import, and every command line run imports this module.
    import trafilatura
    from lxml import etree
    from trafilatura.htmlprocessing import convert_to_html

    document = trafilatura.bare_extraction(
        body,
        url=url,
        with_metadata=True,
        include_comments=False,
        include_images=True,
        include_links=True,
        include_formatting=True,
    )
    if document is None or document.body is None or not (document.text or "").strip():
        return Page(url, note="full text: no article text found on the page")
    markup = etree.tostring(convert_to_html(document.body), encoding="unicode")
    return Page(url, html=markup, title=document.title, published_at=_page_date(document.date))


def _page_date(value: str | None) -> datetime | None:
    """trafilatura's date (YYYY-MM-DD) as midnight UTC."""
    try:
        return datetime.strptime(value or "", "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def fetch_pages(
    settings: Settings, wanted: list[tuple[int, str]], slot_wait: float = SLOT_WAIT_LIMIT, budget: float = PAGES_BUDGET
) -> PageRound:
    """Fetch each (article id, link) page in its host's turn; defer what cannot go now.

    A busy host is waited for up to ``slot_wait`` per page and all pages share ``budget``;
    an article past either is deferred.
    """
    result = PageRound()
    budget_end = time.monotonic() + budget
    for article_id, link in wanted:
        host = urlsplit(link).hostname or ""
        waited = 0.0
        claim = _claim(settings, host)
        while claim.slot_id is None and waited + claim.wait_seconds <= slot_wait:
            if time.monotonic() + claim.wait_seconds > budget_end:
                break
            time.sleep(claim.wait_seconds)
            waited += claim.wait_seconds
            claim = _claim(settings, host)
        if claim.slot_id is None or time.monotonic() > budget_end:
            if claim.slot_id is not None:
                _free(settings, claim.slot_id)
            result.deferred.append(article_id)
            result.wait_seconds = max(result.wait_seconds, claim.wait_seconds, 1.0)
            continue
        try:
            final_url, body, error = fetch_page(link, settings)
        finally:
            _free(settings, claim.slot_id)
        if body is None:
            result.pages[article_id] = Page(final_url, note=f"full text: page fetch failed: {error}"[:NOTE_LIMIT])
            continue
        try:
            result.pages[article_id] = extract_page(body, final_url)
        except Exception as exc:  # a page trafilatura cannot read keeps the summary
            result.pages[article_id] = Page(final_url, note=f"full text: extraction failed: {exc}"[:NOTE_LIMIT])
    return result


def given_up(link: str) -> Page:
    """The page of an article that waited ``GIVE_UP_AFTER`` for its host: the summary stays."""
    host = urlsplit(link).hostname or ""
    return Page(link, note=f"full text: {host} stayed busy for {GIVE_UP_AFTER.days} day; kept the feed's text")


def _claim(settings: Settings, host: str) -> SlotClaim:
    # Its own short transaction: the slot counts for other workers at once, and no lock is
    # held while this worker fetches or sleeps.
    with session_scope(settings) as session:
        return claim_host_slot(session, settings, host, None)


def _free(settings: Settings, slot_id: int) -> None:
    with session_scope(settings) as session:
        free_host_slot(session, slot_id)
