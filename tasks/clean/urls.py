"""URLs: the canonical form copies of one page share, and links resolved against a base.

``canonical_url`` is what dedupe compares and what an article's ``url`` is; ``absolute_url``
resolves the links and image addresses of a body against its entry's link.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit, urlunsplit

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
# Browsers ignore tabs and newlines anywhere in a URL, and C0 controls and spaces around it.
_URL_TABS_NEWLINES = re.compile("[\t\n\r]+")
_URL_EDGE_CHARS = "".join(map(chr, range(0x21)))
_HTTP_URL = re.compile("https?://", re.IGNORECASE)


def _tidy_url(url: str) -> str:
    return _URL_TABS_NEWLINES.sub("", url).strip(_URL_EDGE_CHARS)


def absolute_url(url: str | None, base: str | None, schemes: frozenset[str]) -> str | None:
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

