"""Boilerplate: what a feed body carries besides its article.

Repeated titles and captions, share widgets and counters, "Read more" prompts, and duplicate
paragraphs are dropped; a repeated paragraph ending in a credit ("... (Reuters)") becomes an
image caption. Pure functions of ``Block`` paragraphs (``tasks.clean.text``).
"""

from __future__ import annotations

import html
import re
from collections import Counter

from schemas.payloads import Image
from tasks.clean.text import Block, match_key

# A paragraph or line made only of these widget tokens (font-size toggles, share
# buttons, counters) is junk. Matched whole-word, case-insensitively, with any
# punctuation between tokens: "TT", "20", "1.2K", "Share | Tweet", "0 Comments".
WIDGET_TOKENS = (
    r"tt",
    r"\d+[km]?",  # share and comment counters
    r"shares?",
    r"share this(?: (?:article|story|post|page))?",
    r"tweet",
    r"e-?mail",
    r"print",
    r"comments?",
    r"views?",
    r"likes?",
    r"advertisement",
    r"facebook",
    r"twitter",
    r"whatsapp",
    r"telegram",
    r"linkedin",
    r"pinterest",
    r"reddit",
    r"copy link",
)
# Whole-paragraph prompts and footers, matched case-insensitively from the start.
JUNK_PARAGRAPH_PATTERNS = (
    r"(?:read more|continue reading)(?:\W.*)?",
    r"(?:subscribe|sign up|sign-up|signup)\b.*\bnewsletters?\b.*",
    r"follow us(?: on\b.*)?",
    r"(?:story|article) continues below(?: this)? advertisement",
    r"the post .+ appeared first on .+",
)
# Junk is short: longer paragraphs are never tested against the patterns above.
MAX_JUNK_CHARS = 200
# A prompt ending a real paragraph ("... the council said. Read more »") is cut off it.
# Only after a sentence's end or in brackets: "he wants to read more" is text.
_PROMPT = r"(?:read more|continue reading|read the (?:full|whole) (?:story|article))"
_TRAILING_PROMPT = re.compile(rf"(?:(?<=[.!?…\"”’])\s+|\s*[\[(]\s*){_PROMPT}\W*$", re.IGNORECASE)
_TRAILING_PROMPT_HTML = re.compile(rf"\s*[\[(]?\s*(?:<a\b[^>]*>\s*)?[\[(]?\s*{_PROMPT}(?:[^\w<]|</a>)*$", re.IGNORECASE)
PROMPT_TAIL_CHARS = 60
_TOKEN = "(?:%s)(?!\\w)" % "|".join(WIDGET_TOKENS)
_JUNK = re.compile(
    rf"[\W_]*(?:{_TOKEN}(?:[\W_]+{_TOKEN})*|{'|'.join(JUNK_PARAGRAPH_PATTERNS)})[\W_]*", re.DOTALL
)
# A caption's trailing "(Reuters)" or "(by Omar AL-QATTAA / AFP)" names its credit.
_CREDIT = re.compile(
    r"\s*\(\s*(?:(?:photo|image|picture|credit|courtesy)s?\s*:?\s*)?(?:by\s+)?([^()]{2,100}?)\s*\)\s*$",
    re.IGNORECASE,
)


def split_credit(caption: str) -> tuple[str | None, str | None]:
    """Splits a trailing parenthesised credit off a caption: (caption, credit)."""
    match = _CREDIT.search(caption)
    if not match:
        return caption or None, None
    return caption[: match.start()].strip() or None, match.group(1)


def is_junk_paragraph(text: str) -> bool:
    """True for share widgets, counters and prompts standing alone as a paragraph."""
    return len(text) <= MAX_JUNK_CHARS and bool(_JUNK.fullmatch(text.casefold()))


def collect_images(pairs: list[tuple[str | None, str | None]]) -> tuple[list[Image], set[str]]:
    """Images without duplicates, and the match keys of every caption seen."""
    images: list[Image] = []
    caption_keys: set[str] = set()
    seen_srcs: set[str] = set()
    for src, raw_caption in pairs:
        caption, credit = split_credit(raw_caption) if raw_caption else (None, None)
        keys = {match_key(raw_caption or ""), match_key(caption or "")} - {""}
        duplicate = src in seen_srcs if src else bool(keys & caption_keys)
        caption_keys |= keys
        if not duplicate and (src or caption or credit):
            images.append(Image(src, caption, credit))
            if src:
                seen_srcs.add(src)
    return images, caption_keys


def remove_boilerplate(
    blocks: list[Block], title_key: str, images: list[Image], caption_keys: set[str]
) -> list[Block]:
    """Drops repeated titles, captions, widget junk and duplicate paragraphs.

    A paragraph that repeats and ends in a credit, like "... (Reuters)", is a
    caption: it is added to images (with no src) and removed everywhere.
    """
    # A paragraph over twice as long as the title and every caption cannot reduce to
    # one of them; it gets a cheaper casefolded key that finds exact duplicates.
    keyed_chars = 2 * max([len(title_key), *map(len, caption_keys)]) + 20
    keys = [match_key(block.text) if len(block.text) <= keyed_chars else block.text.casefold() for block in blocks]
    counts = Counter(keys)
    kept: list[Block] = []
    seen: set[str] = set()
    for block, key in zip(blocks, keys):
        if key and (key == title_key or key in caption_keys):
            continue
        if is_junk_paragraph(block.text):
            continue
        block = _strip_trailing_prompt(block)
        if key and counts[key] > 1:
            caption, credit = split_credit(block.text)
            if credit:
                images.append(Image(None, caption, credit))
                caption_keys |= {key, match_key(caption or "")} - {""}
                continue
        identity = key or block.text
        if identity not in seen:
            seen.add(identity)
            kept.append(block)
    return kept


def _strip_trailing_prompt(block: Block) -> Block:
    """The paragraph without a trailing "Read more" or "Continue reading" prompt."""
    start = max(0, len(block.text) - PROMPT_TAIL_CHARS)
    found = _TRAILING_PROMPT.search(block.text, start)
    if found is None or found.start() == 0:
        return block
    text = block.text[: found.start()]
    in_html = _TRAILING_PROMPT_HTML.search(block.html, max(0, len(block.html) - 2 * PROMPT_TAIL_CHARS))
    return block._replace(text=text, html=block.html[: in_html.start()] if in_html else html.escape(text, quote=False))

