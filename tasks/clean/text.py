"""HTML to paragraphs: the tokenizer every entry, title and linked page goes through.

``parse_body`` flattens an HTML fragment (or plain text, one paragraph a line) into ``Block``
paragraphs and (src, caption) image pairs, dropping scripts, hidden elements and tracking
pixels; its input is capped, repaired (``mojibake``) and NFC-normalised first, and its
whitespace collapsed. ``render_html`` writes paragraphs back as sanitized HTML.
Pure functions: no database, no network.
"""

from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser
from typing import NamedTuple

import nh3

from tasks.clean.mojibake import repair_unicode
from tasks.clean.urls import LINK_SCHEMES, WEB_SCHEMES, absolute_url

# Longer input is cut before parsing, so one huge entry cannot stall a worker.
MAX_INPUT_CHARS = 2_000_000
# Longer paragraphs are split at a space: no real one is this long, and nh3
# takes time quadratic in the number of "&" in one text node.
MAX_PARAGRAPH_CHARS = 5_000
# Inline tags nested deeper than this inside one paragraph are flattened.
MAX_INLINE_DEPTH = 16
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
# Controls that are not whitespace to str.split(); entity decoding can bring them back.
_STRAY_CONTROLS = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_THROUGH_LAST_COMMENT_END = re.compile(r".*--\s*>", re.DOTALL)  # html.parser's comment end
_HAS_BLOCK_TAG = re.compile(
    r"<(?:p|div|br|li|ul|ol|h[1-6]|blockquote|table|tr|td|section|article|figure"
    r"|figcaption|pre|hr|dl|dt|dd|header|footer|aside|main)\b",
    re.IGNORECASE,
)
_NON_WORD = re.compile(r"[\W_]+")
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_PIXEL_STYLE = re.compile(r"(?:^|;)\s*(?:width|height)\s*:\s*[01](?:px)?\s*(?:;|$)", re.IGNORECASE)
_LEADING_INT = re.compile(r"\s*(\d+)")


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
            href = absolute_url(attributes.get("href"), self.base, LINK_SCHEMES)
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
            (url for name in IMAGE_SRC_ATTRS if (url := absolute_url(attributes.get(name), self.base, WEB_SCHEMES))),
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
    text = repair_unicode(text)
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


def match_key(text: str) -> str:
    """Text reduced to its letters and digits, for case/space/punctuation-blind matching."""
    return _NON_WORD.sub("", text.casefold())


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

