"""Server-side request forgery: the address actually connected to is checked, after DNS and redirects."""

from __future__ import annotations

import dataclasses
import socket
import types

import httpx
import pytest

from schemas.settings import Settings
from tasks import http
from tasks.fetch import fetch_feed
from tasks.http import FetchRefused, check_connected_address, check_url_allowed
from tests.conftest import Publisher, rss


@pytest.fixture
def strict(sqlite_settings: Settings) -> Settings:
    return dataclasses.replace(sqlite_settings, allow_private_networks=False)


def test_a_name_resolving_to_loopback_is_refused_before_connecting(strict: Settings, publisher: Publisher) -> None:
    publisher.add("/feed.xml", rss([{"title": "secret", "guid": "1"}]))
    port = publisher.server.server_address[1]
    result = fetch_feed(f"http://localhost:{port}/feed.xml", None, None, strict)
    assert result.error is not None and "non-public address 127.0.0.1" in result.error
    assert result.body is None and publisher.hits("/feed.xml") == 0


def test_the_connected_peer_is_checked(strict: Settings, publisher: Publisher) -> None:
    publisher.add("/feed.xml", rss([{"title": "secret", "guid": "1"}]))
    with httpx.Client() as client, client.stream("GET", f"http://localhost:{publisher.server.server_address[1]}/feed.xml") as response:
        with pytest.raises(FetchRefused, match="localhost connected to non-public address 127.0.0.1"):
            check_connected_address(response, allow_private_networks=False)
        check_connected_address(response, allow_private_networks=True)


def test_dns_rebinding_is_caught_at_the_connection(
    strict: Settings, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The safety check's resolver says "public"; the connection's resolver then says 127.0.0.1.
    rebinding = types.SimpleNamespace(
        getaddrinfo=lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80))],
        gaierror=socket.gaierror,
        IPPROTO_TCP=socket.IPPROTO_TCP,
    )
    monkeypatch.setattr(http, "socket", rebinding)
    publisher.add("/feed.xml", rss([{"title": "secret", "guid": "1"}]))
    result = fetch_feed(f"http://localhost:{publisher.server.server_address[1]}/feed.xml", None, None, strict)
    assert result.error is not None and "connected to non-public address 127.0.0.1" in result.error
    assert result.body is None


def test_schemes_private_hops_and_metadata_are_refused(sqlite_settings: Settings, publisher: Publisher) -> None:
    with pytest.raises(FetchRefused, match="non-public address"):
        check_url_allowed("http://10.0.0.1/feed.xml", allow_private_networks=False)
    with pytest.raises(FetchRefused, match="cloud metadata"):
        check_url_allowed("http://169.254.169.254/latest/meta-data/", allow_private_networks=True)
    with pytest.raises(FetchRefused, match="cloud metadata"):
        check_url_allowed("http://[fd00:ec2::254]/", allow_private_networks=True)
    with pytest.raises(FetchRefused, match="only http and https"):
        check_url_allowed("file:///etc/passwd", allow_private_networks=True)
    publisher.add("/hop", b"", status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    result = fetch_feed(publisher.url("/hop"), None, None, sqlite_settings)
    assert result.error is not None and "cloud metadata" in result.error
