"""Outgoing HTTP shared by every stage that fetches: one client, one safety check.

Feeds, WebSub hubs and article pages are all URLs from the outside world, so
every request goes through ``check_url_allowed``: http(s) only, and no
loopback, private, link-local or metadata addresses unless
FEEDMILL_ALLOW_PRIVATE_NETWORKS is set.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import cache
from urllib.parse import urlsplit

import httpx

USER_AGENT = "feedmill/0.1 (feed processing service; polls politely with conditional GET)"
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)


class FetchRefused(Exception):
    """The URL may not be fetched (scheme or address); not worth retrying."""


@cache
def http_client() -> httpx.Client:
    """One pooled client per process; callers follow redirects themselves, checking each hop."""
    return httpx.Client(
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT, "Accept": ACCEPT},
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
    )


def check_url_allowed(url: str, allow_private_networks: bool) -> None:
    """Raise ``FetchRefused`` unless the URL is http(s) to a public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchRefused(f"refused: only http and https URLs are fetched, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise FetchRefused("refused: the URL has no host")
    if allow_private_networks:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise FetchRefused(f"cannot resolve {parts.hostname}: {exc.strerror}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise FetchRefused(
                f"refused: {parts.hostname} resolves to non-public address {address} "
                "(set FEEDMILL_ALLOW_PRIVATE_NETWORKS=1 to allow)"
            )
