"""Clean stage: one raw feed entry in, plain text, safe HTML and image data out.

Feed bodies repeat the title and photo captions, carry share widgets, tracking
pixels, scripts and broken encodings. Dedupe, classify and display all need one
clean version, so it is made once here, as pure functions: no database, no network.
Two things need more than one entry: a feed's own furniture is learned from its
recent articles (``learn_furniture``, fed from the ``paragraph_fingerprints``
table), and a summary-only entry gets its linked page's text (``tasks.fulltext``).
``run_clean`` and the Celery task at the end are the layer that reads and writes
the rows; docs/clean.md has the rules and the figures.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit, urlunsplit

import ftfy
import nh3
from celery import shared_task
from sqlalchemy import Row, delete, insert, select
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import PENDING, Article, Feed, ParagraphFingerprints
from schemas.payloads import ArticleBatch, CleanArticle, Image, RawEntry
from schemas.pipeline import stage_named
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, hand_on_articles
from tasks.fulltext import MAX_DEFERRALS, Page, PageRound, fetch_pages, wants_page
from tasks.storage.articles import Changes, run_article_stage

STAGE = stage_named("clean").name
# Longer input is cut before parsing, so one huge entry cannot stall a worker.
MAX_INPUT_CHARS = 2_000_000
# A summary taken from the body is its first paragraph, cut near this length.
SUMMARY_CHARS = 300
# Longer paragraphs are split at a space: no real one is this long, and nh3
# takes time quadratic in the number of "&" in one text node.
MAX_PARAGRAPH_CHARS = 5_000
# Inline tags nested deeper than this inside one paragraph are flattened.
MAX_INLINE_DEPTH = 16

# --- boilerplate -------------------------------------------------------------
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

# --- URLs --------------------------------------------------------------------
# Query parameters that only track the click; canonical_url drops them.
TRACKING_PARAMS = frozenset({
    "fbclid", "gclid", "gclsrc", "dclid", "msclkid", "mc_cid", "mc_eid",
    "igshid", "yclid", "twclid", "ttclid", "wbraid", "gbraid", "_hsenc",
    "_hsmi", "_ga", "_gl", "mkt_tok", "ref_src", "ref_url", "oly_anon_id",
    "oly_enc_id", "vero_id", "wickedid", "rb_clickid", "s_cid",
})
TRACKING_PARAM_PREFIXES = ("utm_",)
WEB_SCHEMES = frozenset({"http", "https"})  # for images and article URLs
LINK_SCHEMES = WEB_SCHEMES | {"mailto"}
# Attributes that may carry an image's address; lazy loaders put it in data-*.
IMAGE_SRC_ATTRS = ("src", "data-src", "data-lazy-src", "data-original")

# --- HTML structure ----------------------------------------------------------
# Elements dropped with everything inside them.
SKIP_TAGS = frozenset({
    "script", "style", "noscript", "template", "iframe", "frame", "frameset",
    "noframes", "object", "applet", "canvas", "svg", "math", "video", "audio",
    "form", "button", "select", "textarea", "head", "title", "nav",
})
# Elements that start and end a paragraph.
BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "caption", "center", "dd",
    "details", "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure",
    "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "hr",
    "li", "main", "menu", "ol", "p", "pre", "section", "summary", "table",
    "tbody", "td", "tfoot", "th", "thead", "tr", "ul", "br",
})
# Block elements whose start closes an open <p>, as HTML5 parsers do.
P_CLOSING_TAGS = BLOCK_TAGS - {"caption", "tbody", "td", "tfoot", "th", "thead", "tr", "br"}
VOID_TAGS = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "keygen",
    "link", "meta", "param", "source", "track", "wbr",
})
# Inline formatting kept in the HTML output, mapped to the tag written.
INLINE_TAGS = {
    "a": "a", "b": "b", "strong": "strong", "i": "i", "em": "em", "u": "u",
    "s": "s", "strike": "s", "del": "del", "ins": "ins", "sub": "sub",
    "sup": "sup", "code": "code", "q": "q", "cite": "cite", "abbr": "abbr",
    "mark": "mark", "small": "small",
}
HEADING_TAGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
LIST_TAGS = frozenset({"ul", "ol"})

# Sanitizer for the HTML output: the last line of defence, with its own allowlist.
_SANITIZER = nh3.Cleaner(
    tags={"p", "ul", "ol", "li", "blockquote", *HEADING_TAGS, *INLINE_TAGS.values()},
    clean_content_tags={"script", "style"},
    attributes={"a": {"href"}},
    url_schemes=set(LINK_SCHEMES),
    url_relative="deny",
    link_rel="noopener noreferrer nofollow",
    strip_comments=True,
)
# ftfy without the steps that would change correct text: entities are decoded
# once by the HTML parser, and curly quotes and full-width forms are content.
_FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=False, uncurl_quotes=False, fix_character_width=False, explain=False
)


def _mojibake_hint() -> re.Pattern[str]:
    """Pattern for text that ftfy might change; ftfy is slow, so other text skips it.

    Mojibake from UTF-8 read as Latin-1, Windows-1252 or Windows-1251 puts a
    lead-byte character right before a continuation-byte character; ftfy also
    fixes C1 controls, ligatures, terminal escapes and surrogates.
    """
    continuation = bytes(range(0x80, 0xA0)) + bytes(range(0xA1, 0xC0))
    latin = continuation.decode("latin-1") + continuation.decode("cp1252", "ignore") + "\ufffd"
    cyrillic = continuation.decode("cp1251", "ignore")
    return re.compile(
        f"[\u00c2-\u00f4][{re.escape(latin)}]|[\u00c2\u00c3][ \u00a0]"
        f"|[\u0420\u0421][{re.escape(cyrillic)}]|[\u0080-\u009f\u001b\ufb00-\ufb06\ud800-\udfff]"
    )


_MOJIBAKE_HINT = _mojibake_hint()
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]")
# Any text that needs repair has one of these: a control character or the first
# character of a _MOJIBAKE_HINT match. Most text has none, and skips repair.
_REPAIR_CANDIDATE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\u00c2-\u00f4\u0420\u0421\ufb00-\ufb06\ud800-\udfff]")
# Controls that are not whitespace to str.split(); entity decoding can bring them back.
_STRAY_CONTROLS = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# Browsers ignore tabs and newlines anywhere in a URL, and C0 controls and spaces around it.
_URL_TABS_NEWLINES = re.compile("[\t\n\r]+")
_URL_EDGE_CHARS = "".join(map(chr, range(0x21)))
_HTTP_URL = re.compile("https?://", re.IGNORECASE)
_THROUGH_LAST_COMMENT_END = re.compile(r".*--\s*>", re.DOTALL)  # html.parser's comment end
_HAS_BLOCK_TAG = re.compile(
    r"<(?:p|div|br|li|ul|ol|h[1-6]|blockquote|table|tr|td|section|article|figure"
    r"|figcaption|pre|hr|dl|dt|dd|header|footer|aside|main)\b",
    re.IGNORECASE,
)
_NON_WORD = re.compile(r"[\W_]+")
_TOKEN = "(?:%s)(?!\\w)" % "|".join(WIDGET_TOKENS)
_JUNK = re.compile(
    rf"[\W_]*(?:{_TOKEN}(?:[\W_]+{_TOKEN})*|{'|'.join(JUNK_PARAGRAPH_PATTERNS)})[\W_]*", re.DOTALL
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_PIXEL_STYLE = re.compile(r"(?:^|;)\s*(?:width|height)\s*:\s*[01](?:px)?\s*(?:;|$)", re.IGNORECASE)
_LEADING_INT = re.compile(r"\s*(\d+)")
# A caption's trailing "(Reuters)" or "(by Omar AL-QATTAA / AFP)" names its credit.
_CREDIT = re.compile(
    r"\s*\(\s*(?:(?:photo|image|picture|credit|courtesy)s?\s*:?\s*)?(?:by\s+)?([^()]{2,100}?)\s*\)\s*$",
    re.IGNORECASE,
)


class Block(NamedTuple):
    """One paragraph of a body: its plain text and its inline HTML."""

    tag: str  # p, h1-h6 or li
    container: str | None  # ul, ol, blockquote or None
    text: str
    html: str


class _Open:
    """An element open on the parser's stack."""

    __slots__ = ("caption", "container", "emitted_in", "figure", "skips", "tag", "tag_kind")

    def __init__(self, tag: str, parent: _Open | None) -> None:
        self.tag = tag
        if tag in HEADING_TAGS or tag == "li":
            self.tag_kind = tag
        else:
            self.tag_kind = parent.tag_kind if parent else "p"
        container = tag if tag in LIST_TAGS or tag == "blockquote" else (parent.container if parent else None)
        self.container = "ul" if tag == "li" and container not in LIST_TAGS else container
        self.skips = False
        self.emitted_in = -1  # paragraph number the inline tag was written in
        self.figure: _Figure | None = None
        self.caption = False


class _Figure:
    """Images and caption text gathered inside one <figure>."""

    __slots__ = ("caption", "images")

    def __init__(self) -> None:
        self.images: list[tuple[str | None, str]] = []
        self.caption: list[str] = []


class _BodyParser(HTMLParser):
    """Flattens an HTML fragment into paragraphs and (src, caption) image pairs.

    Open elements live on an explicit stack, so nesting depth costs memory,
    never recursion; an end tag with no open match is ignored in O(1).
    """

    def __init__(self, base: str | None, lines_are_paragraphs: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.base = base
        self.lines_are_paragraphs = lines_are_paragraphs
        self.blocks: list[Block] = []
        self.images: list[tuple[str | None, str | None]] = []
        self._stack: list[_Open] = []
        self._open_counts: dict[str, int] = {}
        self._skip_depth = 0
        self._caption_depth = 0
        self._figures: list[_Figure] = []
        self._text: list[str] = []
        self._length = 0
        self._tags: list[tuple[int, str]] = []  # inline tags to write at these text offsets
        self._inline: list[str] = []
        self._paragraph_no = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs} if attrs else {}
        if tag in VOID_TAGS:
            if not self._skip_depth:
                if tag in ("br", "hr"):
                    self._flush()
                elif tag == "img":
                    self._add_image(attributes)
            return
        if tag in BLOCK_TAGS:
            self._close_implied(tag)
        element = _Open(tag, self._stack[-1] if self._stack else None)
        if not self._skip_depth:
            if tag in BLOCK_TAGS:
                self._flush()
            if tag in SKIP_TAGS or (attributes and _is_hidden(attributes)):
                element.skips = True
            elif tag == "figure":
                element.figure = _Figure()
                self._figures.append(element.figure)
            elif tag == "figcaption" and self._figures:
                element.caption = True
                self._caption_depth += 1
            elif tag in INLINE_TAGS and not self._caption_depth:
                self._open_inline(element, attributes)
        if element.skips:
            self._skip_depth += 1
        self._stack.append(element)
        self._open_counts[tag] = self._open_counts.get(tag, 0) + 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self._open_counts.get(tag):
            if tag in ("br", "p") and not self._skip_depth:  # HTML5 reads a stray </br> or </p> as a break
                self._flush()
            return
        while True:
            element = self._stack[-1]
            self._close(element)
            self._stack.pop()
            self._open_counts[element.tag] -= 1
            if element.tag == tag:
                return

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._caption_depth:
            self._figures[-1].caption.append(data)
        elif self.lines_are_paragraphs:
            for number, line in enumerate(_LINE_BREAK.split(data)):
                if number:
                    self._flush()
                self._append(line)
        elif self._text or not data.isspace():
            self._append(data)

    def parse_marked_section(self, i: int, report: int = 1) -> int:
        """Reads "<![...>" as HTML5 does, as a bogus comment; the base class raises on malformed ones."""
        return self.parse_bogus_comment(i, report)

    def close(self) -> None:
        super().close()
        while self._stack:
            self.handle_endtag(self._stack[-1].tag)
        self._flush()

    def _close(self, element: _Open) -> None:
        """Ends one element taken off the stack."""
        if element.skips:
            self._skip_depth -= 1
            return
        if self._skip_depth:
            return
        if element.tag in BLOCK_TAGS:
            self._flush()
        if element.emitted_in == self._paragraph_no:
            self._tags.append((self._length, f"</{self._inline.pop()}>"))
        if element.caption:
            self._caption_depth -= 1
        if element.figure:
            self._end_figure(self._figures.pop())

    def _close_implied(self, tag: str) -> None:
        """Closes an open <p> (or <li> before a new <li>) that this block tag ends in HTML5."""
        for _ in range(3):
            scanned = 0
            position = len(self._stack) - 1
            while position >= 0 and self._stack[position].tag not in BLOCK_TAGS and scanned < 32:
                position -= 1
                scanned += 1
            if position < 0:
                return
            open_tag = self._stack[position].tag
            if (open_tag == "p" and tag in P_CLOSING_TAGS) or (open_tag == tag and tag in ("li", "dt", "dd")):
                self.handle_endtag(open_tag)
            else:
                return

    def _open_inline(self, element: _Open, attributes: dict[str, str]) -> None:
        if len(self._inline) >= MAX_INLINE_DEPTH:
            return
        name = INLINE_TAGS[element.tag]
        if name == "a":
            href = _absolute_url(attributes.get("href"), self.base, LINK_SCHEMES)
            if href is None:
                return
            self._tags.append((self._length, f'<a href="{html.escape(href)}">'))
        else:
            self._tags.append((self._length, f"<{name}>"))
        self._inline.append(name)
        element.emitted_in = self._paragraph_no

    def _append(self, text: str) -> None:
        """Adds text to the current paragraph, starting new ones past MAX_PARAGRAPH_CHARS."""
        while self._length + len(text) > MAX_PARAGRAPH_CHARS:
            room = MAX_PARAGRAPH_CHARS - self._length
            cut = text.rfind(" ", 1, room)
            if cut < 1:
                cut = room
            self._text.append(text[:cut])
            self._length += cut
            self._flush()
            text = text[cut:]
        self._text.append(text)
        self._length += len(text)

    def _flush(self) -> None:
        """Ends the current paragraph; keeps it if it has any text."""
        if self._text:
            raw = "".join(self._text)
            text = _collapse(raw)
            if text:
                if not unicodedata.is_normalized("NFC", text):
                    text = unicodedata.normalize("NFC", text)
                markup = self._markup(raw) if self._tags else html.escape(text, quote=False)
                top = self._stack[-1] if self._stack else None
                self.blocks.append(Block(top.tag_kind if top else "p", top.container if top else None, text, markup))
            self._text.clear()
            self._length = 0
        if self._tags:
            self._tags.clear()
            self._inline.clear()
        self._paragraph_no += 1

    def _markup(self, raw: str) -> str:
        """The current paragraph's raw text as HTML: escaped, with its inline tags put back."""
        parts = []
        start = 0
        for offset, tag in self._tags:
            parts.append(html.escape(raw[start:offset], quote=False))
            parts.append(tag)
            start = offset
        parts.append(html.escape(raw[start:], quote=False))
        parts.extend(f"</{name}>" for name in reversed(self._inline))
        return unicodedata.normalize("NFC", _collapse("".join(parts)))

    def _add_image(self, attributes: dict[str, str]) -> None:
        if _is_hidden(attributes) or _is_tracking_pixel(attributes):
            return
        src = next(
            (url for name in IMAGE_SRC_ATTRS if (url := _absolute_url(attributes.get(name), self.base, WEB_SCHEMES))),
            None,
        )
        alt = _collapse(attributes.get("alt", ""))
        if self._figures:
            self._figures[-1].images.append((src, alt))
        elif src:
            self.images.append((src, alt or None))

    def _end_figure(self, figure: _Figure) -> None:
        caption = _collapse("".join(figure.caption))
        if figure.images:
            self.images.extend((src, caption or alt or None) for src, alt in figure.images)
        elif caption:  # a figure without an image (a pull quote): its caption is body text
            self._append(caption)
            self._flush()


def _collapse(text: str) -> str:
    """Collapses whitespace and control characters to single spaces and trims."""
    if _STRAY_CONTROLS.search(text):
        text = _STRAY_CONTROLS.sub(" ", text)
    return " ".join(text.split())


def _is_hidden(attributes: dict[str, str]) -> bool:
    return "hidden" in attributes or ("style" in attributes and bool(_HIDDEN_STYLE.search(attributes["style"])))


def _is_tracking_pixel(attributes: dict[str, str]) -> bool:
    """True for images sized 0 or 1 pixel: invisible, they only report the view."""
    for name in ("width", "height"):
        size = _LEADING_INT.match(attributes.get(name, ""))
        if size and int(size.group(1)) <= 1:
            return True
    return bool(_PIXEL_STYLE.search(attributes.get("style", "")))


def _tidy_url(url: str) -> str:
    return _URL_TABS_NEWLINES.sub("", url).strip(_URL_EDGE_CHARS)


def _absolute_url(url: str | None, base: str | None, schemes: frozenset[str]) -> str | None:
    """Resolves url against base; None unless the result uses one of schemes."""
    if not url:
        return None
    url = _tidy_url(url)
    if _HTTP_URL.match(url):  # already absolute: skip the slow urljoin
        return url
    try:
        if base:
            url = urljoin(base, url)
        scheme = urlsplit(url).scheme.lower()
    except ValueError:  # e.g. an unbalanced "[" in an IPv6 host
        return None
    return url if scheme in schemes else None


def canonical_url(url: str | None) -> str | None:
    """The URL other copies of the same page share, or None if url is not http(s).

    Lowercases scheme and host, drops default ports, the fragment and tracking
    query parameters; other parameters keep their order and spelling.
    """
    if not url:
        return None
    try:
        parts = urlsplit(_tidy_url(url))
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in WEB_SCHEMES or not parts.netloc:
        return None
    userinfo, at, host = parts.netloc.rpartition("@")
    host = host.lower()
    default_port = ":80" if scheme == "http" else ":443"
    host = host.removesuffix(default_port)
    host = host.rstrip(":")
    if not host:
        return None
    query = "&".join(
        pair for pair in parts.query.split("&") if pair and not _is_tracking_param(pair.partition("=")[0])
    )
    return urlunsplit((scheme, userinfo + at + host, parts.path or "/", query, ""))


def _is_tracking_param(name: str) -> bool:
    name = name.lower()
    return name in TRACKING_PARAMS or name.startswith(TRACKING_PARAM_PREFIXES)


def _prepare(raw: str | None) -> str:
    """Caps the input, repairs its Unicode and drops control characters.

    A "<" after the last ">", or a "<!--" after the last comment end, is
    escaped. html.parser reads such a "<" as text anyway, but (before Python
    3.11.13) only after searching the rest of the input for its end, once per
    "<": quadratic time on input like "<a<a<a..." or "<!--x><!--x>...".
    """
    if not raw:
        return ""
    text = raw[:MAX_INPUT_CHARS]
    if "<!--" in text:
        comments_end = _THROUGH_LAST_COMMENT_END.match(text)
        unclosed = text.find("<!--", comments_end.end() if comments_end else 0)
        if unclosed >= 0:
            text = text[:unclosed] + text[unclosed:].replace("<!--", "&lt;!--")
    last_gt = text.rfind(">")
    if text.find("<", last_gt + 1) >= 0:
        text = text[: last_gt + 1] + text[last_gt + 1 :].replace("<", "&lt;")
    if _REPAIR_CANDIDATE.search(text):
        if _MOJIBAKE_HINT.search(text):
            text = ftfy.fix_text(text, _FTFY_CONFIG)
        text = _CONTROL_CHARS.sub("", text)
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


def parse_body(raw: str | None, base: str | None) -> tuple[list[Block], list[tuple[str | None, str | None]]]:
    """Paragraphs and (src, caption) image pairs of an HTML fragment or of plain text.

    Plain text (no block-level tag) has one paragraph per line: scraped text
    puts each block on its own line.
    """
    text = _prepare(raw)
    parser = _BodyParser(base, lines_are_paragraphs=not _HAS_BLOCK_TAG.search(text))
    parser.feed(text)
    parser.close()
    return parser.blocks, parser.images


def plain_text(raw: str | None) -> str:
    """One line of plain text from an HTML or text snippet such as a title."""
    text = _prepare(raw)
    parser = _BodyParser(None, lines_are_paragraphs=False)
    parser.feed(text)
    parser.close()
    return " ".join(block.text for block in parser.blocks)


def split_credit(caption: str) -> tuple[str | None, str | None]:
    """Splits a trailing parenthesised credit off a caption: (caption, credit)."""
    match = _CREDIT.search(caption)
    if not match:
        return caption or None, None
    return caption[: match.start()].strip() or None, match.group(1)


def _match_key(text: str) -> str:
    """Text reduced to its letters and digits, for case/space/punctuation-blind matching."""
    return _NON_WORD.sub("", text.casefold())


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
        keys = {_match_key(raw_caption or ""), _match_key(caption or "")} - {""}
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
    keys = [_match_key(block.text) if len(block.text) <= keyed_chars else block.text.casefold() for block in blocks]
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
                caption_keys |= {key, _match_key(caption or "")} - {""}
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


def render_html(blocks: list[Block]) -> str:
    """Sanitized HTML for paragraphs, grouping list items and quotes in their containers."""
    parts: list[str] = []
    container: str | None = None
    for block in blocks:
        if block.container != container:
            if container:
                parts.append(f"</{container}>")
            if block.container:
                parts.append(f"<{block.container}>")
            container = block.container
        tag = "li" if container in LIST_TAGS else ("p" if block.tag == "li" else block.tag)
        parts.append(f"<{tag}>{block.html}</{tag}>")
    if container:
        parts.append(f"</{container}>")
    return _SANITIZER.clean("".join(parts))


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
        if _match_key(summary) not in ("", title_key):
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
    title_key = _match_key(title)
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


# --- learned furniture --------------------------------------------------------
# A feed's furniture ("Listen to this article", "© Example Media", a standing
# podcast plug) is a short paragraph that recurs across its articles. The rule
# (docs/clean.md): a paragraph of at most FURNITURE_MAX_CHARS is furniture when
# its fingerprint is in at least max(FURNITURE_MIN_ARTICLES, FURNITURE_SHARE * w)
# of w articles: the feed's FURNITURE_WINDOW most recent other cleaned articles
# plus the batch being cleaned.
FURNITURE_MAX_CHARS = 400
FURNITURE_WINDOW = 50
FURNITURE_MIN_ARTICLES = 3
FURNITURE_SHARE = 0.3


def paragraph_fingerprint(text: str) -> int | None:
    """63-bit hash of a short paragraph's letters and digits; None for long or empty ones."""
    if len(text) > FURNITURE_MAX_CHARS:
        return None
    key = _match_key(text)
    if not key:
        return None
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def paragraph_fingerprints(blocks: Sequence[Block]) -> list[int]:
    """The distinct fingerprints of an article's short paragraphs, sorted."""
    return sorted({fp for block in blocks if (fp := paragraph_fingerprint(block.text)) is not None})


def learn_furniture(articles: Sequence[Collection[int]]) -> frozenset[int]:
    """Fingerprints present in enough of these articles (each a fingerprint set) to be furniture."""
    counts = Counter(fp for fingerprints in articles for fp in set(fingerprints))
    needed = max(FURNITURE_MIN_ARTICLES, math.ceil(FURNITURE_SHARE * len(articles)))
    return frozenset(fp for fp, count in counts.items() if count >= needed)


def remove_furniture(blocks: list[Block], furniture: Collection[int]) -> list[Block]:
    if not furniture:
        return blocks
    return [block for block in blocks if paragraph_fingerprint(block.text) not in furniture]


# --- the stage ------------------------------------------------------------------


#: The columns an entry is cleaned from, with its id and feed: what ``raw_entry`` reads.
RAW_COLUMNS = (
    Article.id, Article.feed_id, Article.entry_key, Article.guid, Article.link, Article.raw_title,
    Article.raw_author, Article.published_at, Article.raw_summary_html, Article.raw_content_html, Article.raw_hash,
)


def raw_entry(article: Any) -> RawEntry:
    """The entry as parse stored it, from an Article or a row of ``RAW_COLUMNS``."""
    return RawEntry(
        entry_key=article.entry_key,
        guid=article.guid,
        link=article.link,
        title=article.raw_title,
        author=article.raw_author,
        published_at=article.published_at,
        summary_html=article.raw_summary_html,
        content_html=article.raw_content_html,
        raw_hash=article.raw_hash,
    )


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


class Planned(NamedTuple):
    """An entry read before the writing transaction, with its draft (None if drafting failed)."""

    raw_hash: str
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
        stale = [row.id for row in rows if (p := self.planned.get(row.id)) is None or p.raw_hash != row.raw_hash]
        if stale:
            for entry in session.execute(select(*RAW_COLUMNS).where(Article.id.in_(stale))):
                self.planned[entry.id] = Planned(entry.raw_hash, raw_entry(entry), None)
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
            recent = session.scalars(
                select(ParagraphFingerprints.fingerprints)
                .where(ParagraphFingerprints.feed_id == feed_id, ParagraphFingerprints.article_id.not_in(feed_of))
                .order_by(ParagraphFingerprints.article_id.desc())
                .limit(FURNITURE_WINDOW)
            ).all()
            furniture = learn_furniture([*recent, *(fingerprints[i] for i in ids)])
            for article_id in ids:
                try:
                    self.results[article_id] = finish_entry(drafts[article_id], furniture)
                except Exception as exc:
                    self.results[article_id] = exc
        session.execute(delete(ParagraphFingerprints).where(ParagraphFingerprints.article_id.in_(feed_of)))
        if fingerprints:
            session.execute(
                insert(ParagraphFingerprints),
                [{"article_id": i, "feed_id": feed_of[i], "fingerprints": fps} for i, fps in fingerprints.items()],
            )

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
    with session_scope(settings, read_only=True) as session:
        rows = session.execute(
            select(*RAW_COLUMNS, Feed.full_text)
            .join(Feed, Feed.id == Article.feed_id)
            .where(Article.id.in_(article_ids), Article.stage == STAGE, Article.status == PENDING)
            .order_by(Article.id)
        ).all()
    wanted = []
    planned = {}
    for row in rows:
        entry = raw_entry(row)
        try:
            draft = draft_entry(entry)
        except Exception:  # drafted again, and its error recorded, by the stage
            planned[row.id] = Planned(row.raw_hash, entry, None)
            continue
        planned[row.id] = Planned(row.raw_hash, entry, draft)
        mode = row.full_text or settings.full_text
        if mode == "off" or not row.link:
            continue
        if wants_page(mode, body_chars(draft), row.link, settings.full_text_min_chars):
            wanted.append((row.id, row.link))
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
