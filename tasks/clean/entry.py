"""One entry cleaned: its title, canonical URL, summary, text, HTML and images.

``draft_entry`` parses and strips an entry of its own boilerplate; ``finish_entry`` removes its
feed's learned furniture and writes the ``CleanArticle``; ``draft_with_page`` prefers the linked
page's article (``tasks.fulltext``) when it says more. Pure functions: no database, no network.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import NamedTuple

from schemas.payloads import CleanArticle, Image, RawEntry
from tasks.clean.boilerplate import collect_images, remove_boilerplate
from tasks.clean.furniture import remove_furniture
from tasks.clean.text import Block, match_key, parse_body, plain_text, render_html
from tasks.clean.urls import canonical_url
from tasks.fulltext import Page

# A summary taken from the body is its first paragraph, cut near this length.
SUMMARY_CHARS = 300


def trim_at_word(text: str, limit: int = SUMMARY_CHARS) -> str:
    """Text cut to at most limit characters at a word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    head, space, _ = cut.rpartition(" ")
    return (head if space and head else cut).rstrip(" ,;:-–—") + "…"


def _summary(
    summary_html: str | None, base: str | None, title_key: str, caption_keys: set[str], paragraphs: list[str]
) -> str:
    """The entry's own summary if it says more than the title, else the first paragraph."""
    if summary_html:
        blocks, _ = parse_body(summary_html, base)
        summary = " ".join(block.text for block in remove_boilerplate(blocks, title_key, [], set(caption_keys)))
        if match_key(summary) not in ("", title_key):
            return summary
    return trim_at_word(paragraphs[0]) if paragraphs else ""


class Draft(NamedTuple):
    """An entry cleaned of everything but its feed's learned furniture."""

    title: str
    title_key: str
    link: str | None
    blocks: list[Block]
    images: list[Image]
    caption_keys: set[str]
    separate_summary: str | None


def draft_entry(entry: RawEntry) -> Draft:
    """Parses and cleans one entry's title and body, its own boilerplate removed."""
    title = plain_text(entry.title)
    title_key = match_key(title)
    content = entry.content_html if entry.content_html and not entry.content_html.isspace() else None
    summary = entry.summary_html if entry.summary_html and not entry.summary_html.isspace() else None
    separate_summary = summary if content and summary and summary.strip() != content.strip() else None
    body, image_pairs = parse_body(content or summary, entry.link)
    images, caption_keys = collect_images(image_pairs)
    blocks = remove_boilerplate(body, title_key, images, caption_keys)
    return Draft(title, title_key, entry.link, blocks, images, caption_keys, separate_summary)


def finish_entry(draft: Draft, furniture: Collection[int] = frozenset()) -> CleanArticle:
    """The clean article from a draft, its feed's furniture paragraphs removed."""
    blocks = remove_furniture(draft.blocks, furniture)
    paragraphs = [block.text for block in blocks]
    return CleanArticle(
        title=draft.title,
        url=canonical_url(draft.link),
        summary=_summary(draft.separate_summary, draft.link, draft.title_key, draft.caption_keys, paragraphs),
        text="\n\n".join(paragraphs),
        html=render_html(blocks),
        images=tuple(draft.images),
    )


def clean_entry(entry: RawEntry, furniture: Collection[int] = frozenset()) -> CleanArticle:
    """Cleans one feed entry: title, canonical URL, summary, text, HTML and images."""
    return finish_entry(draft_entry(entry), furniture)


def body_chars(draft: Draft) -> int:
    return sum(len(block.text) for block in draft.blocks)


def draft_with_page(entry: RawEntry, page: Page | None) -> Draft:
    """The entry's draft, from its linked page's article when that has more text."""
    draft = draft_entry(entry)
    if page is None or page.html is None:
        return draft
    page_draft = draft_entry(
        replace(
            entry,
            link=page.url,
            title=entry.title or page.title,
            content_html=page.html,
            summary_html=entry.summary_html or entry.content_html,
        )
    )
    return page_draft if body_chars(page_draft) > body_chars(draft) else draft

