"""URLs that come from feeds: kept only when they are http(s), and feed URLs in one spelling.

Every URL a feed gives (item links, enclosures, feed and site links) passes
``safe_link`` before it is stored: resolved against its base, and dropped
unless its scheme is http or https, so no exported field can run script
(``javascript:``, ``data:``, ``vbscript:``, in any case or with leading
whitespace or control characters, as browsers read them). ``feed_url_key``
is the one spelling of a feed URL that ``feeds add``, import and redirects
compare and store, so the same feed is never added twice.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import httpx

WEB_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
#: What browsers strip from a URL before reading its scheme: C0 controls and space at the
#: edges, tabs and newlines anywhere (WHATWG URL standard).
_EDGES = "".join(map(chr, range(0x21)))
_TABS_NEWLINES = re.compile("[\t\n\r]")


def safe_link(url: str | None, base: str | None = None) -> str | None:
    """``url`` resolved against ``base``, or None unless it is an http(s) URL with a host."""
    if not url:
        return None
    url = _TABS_NEWLINES.sub("", url).strip(_EDGES)
    try:
        resolved = urljoin(base, url) if base else url
        parts = urlsplit(resolved)
    except ValueError:  # e.g. an unbalanced "[" in an IPv6 host
        return None
    if parts.scheme.lower() not in WEB_SCHEMES or not parts.hostname:
        return None
    return resolved


class BadFeedUrl(ValueError):
    """Not an http(s) URL with a host."""


def feed_url_key(url: str) -> str:
    """The normal spelling of a feed URL: scheme and host in lower case (IDNA for
    international names), the default port and the fragment dropped, an empty path as ``/``.

    The path and query are kept as given: servers may tell their case and order apart.
    """
    text = url.strip()
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, ValueError) as exc:
        raise BadFeedUrl(f"not an http(s) feed URL: {text!r} ({exc})") from None
    if parsed.scheme not in WEB_SCHEMES or not parsed.host:
        raise BadFeedUrl(f"not an http(s) feed URL: {text!r}")
    port = None if parsed.port == DEFAULT_PORTS[parsed.scheme] else parsed.port
    return str(parsed.copy_with(port=port, fragment=None, raw_path=parsed.raw_path or b"/"))
