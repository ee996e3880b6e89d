"""Outgoing HTTP shared by every stage that fetches: one client, one safety check.

Feeds, WebSub hubs and article pages are all URLs from the outside world, so
every request goes through ``check_url_allowed``: http(s) only, and no
loopback, private, link-local or metadata addresses unless
FEEDMILL_ALLOW_PRIVATE_NETWORKS is set. DNS may answer differently when the
connection is made (rebinding), so ``check_connected_address`` checks the
peer of the open connection too, before any body is read. Cloud metadata
addresses are refused even when private networks are allowed. ``safe_get``
is the one GET that feed fetches and page fetches share.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass, field, replace
from functools import cache
from urllib.parse import urljoin, urlsplit

import httpx

from schemas.settings import Settings

USER_AGENT = "feedmill/0.1 (feed processing service; polls politely with conditional GET)"
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)


#: Cloud instance metadata (AWS, GCP, Azure, OpenStack; AWS over IPv6): never fetched.
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})


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
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise FetchRefused(f"cannot resolve {parts.hostname}: {exc.strerror}") from exc
    for info in infos:
        _check_address(parts.hostname, "resolves to", info[4][0], allow_private_networks)


def check_connected_address(response: httpx.Response, allow_private_networks: bool) -> None:
    """Raise ``FetchRefused`` unless the connection behind ``response`` went to an allowed address."""
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if not peer:
        raise FetchRefused("refused: cannot tell which address the connection went to")
    _check_address(response.request.url.host, "connected to", peer[0], allow_private_networks)


def _check_address(host: str, how: str, value: str, allow_private_networks: bool) -> None:
    address = ipaddress.ip_address(value.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        raise FetchRefused(f"refused: {host} {how} non-public address {address} (cloud metadata, never fetched)")
    if not allow_private_networks and not address.is_global:
        raise FetchRefused(
            f"refused: {host} {how} non-public address {address} (set FEEDMILL_ALLOW_PRIVATE_NETWORKS=1 to allow)"
        )


PERMANENT_REDIRECTS = (301, 308)


@dataclass(frozen=True)
class HttpResult:
    """One GET after redirects: the final response's status, headers and body, or an error.

    ``body`` is read only for 2xx answers. ``moved_to`` is the final URL when at least one
    redirect was followed and every one was permanent (301/308).
    """

    url: str
    status_code: int | None = None
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    error: str | None = None
    moved_to: str | None = None


def safe_get(url: str, settings: Settings, headers: dict[str, str] | None = None) -> HttpResult:
    """GET ``url``: redirects followed up to the limit with every hop checked (before the request
    and by the address actually connected to), the body capped after decompression, slow servers
    cut off at the deadline. Never raises: every failure is an ``HttpResult`` with ``error``."""
    timeout = httpx.Timeout(settings.fetch_timeout)
    deadline = time.monotonic() + settings.fetch_deadline
    current = url
    all_permanent = True
    try:
        for hop in range(settings.max_redirects + 1):
            check_url_allowed(current, settings.allow_private_networks)
            with http_client().stream("GET", current, headers=headers or {}, timeout=timeout) as response:
                check_connected_address(response, settings.allow_private_networks)  # DNS may have changed
                if response.is_redirect and "location" in response.headers:
                    all_permanent = all_permanent and response.status_code in PERMANENT_REDIRECTS
                    current = urljoin(current, response.headers["location"])
                    continue
                moved_to = current if hop > 0 and all_permanent else None
                return _read(response, current, settings, deadline, moved_to)
        return HttpResult(current, error=f"more than {settings.max_redirects} redirects")
    except FetchRefused as exc:
        return HttpResult(current, error=str(exc))
    except httpx.TimeoutException:
        return HttpResult(current, error=f"timed out (no answer within {settings.fetch_timeout:g} s)")
    except httpx.DecodingError as exc:
        return HttpResult(current, error=f"could not decode the compressed body: {exc}")
    except httpx.HTTPError as exc:
        return HttpResult(current, error=f"connection failed: {exc or type(exc).__name__}")


def _read(response: httpx.Response, url: str, settings: Settings, deadline: float, moved_to: str | None) -> HttpResult:
    code = response.status_code
    headers = {name.lower(): value for name, value in response.headers.items()}
    answer = HttpResult(url, code, response.reason_phrase or "", headers, moved_to=moved_to)
    if not 200 <= code < 300:
        return answer
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():  # decoded: the cap applies after decompression
        size += len(chunk)
        if size > settings.max_body_bytes:
            return replace(answer, error=f"body larger than {settings.max_body_bytes} bytes")
        if time.monotonic() > deadline:
            return replace(answer, error=f"fetch took longer than {settings.fetch_deadline:g} s")
        chunks.append(chunk)
    return replace(answer, body=b"".join(chunks))
