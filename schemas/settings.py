"""feedmill's configuration: every setting, its environment variable and default.

One frozen dataclass read from the environment, so a worker, the scheduler
and the command line started with the same environment agree on everything.
With nothing set, feedmill runs embedded: SQLite and a filesystem broker
under ``./var/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

MiB = 1024 * 1024


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Runtime configuration; ``Settings.from_env()`` is the only constructor used."""

    #: FEEDMILL_HOME: directory for the embedded database and broker.
    home: Path = Path("var")
    #: FEEDMILL_DATABASE_URL: SQLAlchemy URL; default SQLite at $FEEDMILL_HOME/feedmill.db.
    database_url: str = ""
    #: FEEDMILL_BROKER_URL: Celery broker; default the filesystem broker in $FEEDMILL_HOME/broker.
    broker_url: str = ""
    #: FEEDMILL_ALLOW_PRIVATE_NETWORKS: allow fetching loopback/private/link-local addresses.
    allow_private_networks: bool = False
    #: FEEDMILL_MAX_BODY_BYTES: largest feed body accepted, counted after decompression.
    max_body_bytes: int = 15 * MiB
    #: FEEDMILL_FETCH_TIMEOUT: seconds for connect and for each read of a fetch.
    fetch_timeout: float = 20.0
    #: FEEDMILL_FETCH_DEADLINE: seconds a whole fetch may take (slow-drip servers).
    fetch_deadline: float = 60.0
    #: FEEDMILL_MAX_REDIRECTS: redirects followed before a fetch fails.
    max_redirects: int = 5
    #: FEEDMILL_POLL_INTERVAL: seconds between polls of one feed.
    poll_interval: int = 1800
    #: FEEDMILL_DISPATCH_EVERY: seconds between the scheduler's looks for due feeds.
    dispatch_every: float = 30.0
    #: FEEDMILL_LEASE_SECONDS: how long a claimed feed stays locked to one fetch.
    lease_seconds: int = 300
    #: FEEDMILL_BATCH_SIZE: most articles one stage task handles.
    batch_size: int = 200

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("FEEDMILL_HOME") or "var")
        env = os.environ.get
        return cls(
            home=home,
            database_url=env("FEEDMILL_DATABASE_URL") or f"sqlite:///{home / 'feedmill.db'}",
            broker_url=env("FEEDMILL_BROKER_URL") or "filesystem://localhost/",
            allow_private_networks=_env_bool("FEEDMILL_ALLOW_PRIVATE_NETWORKS", False),
            max_body_bytes=int(env("FEEDMILL_MAX_BODY_BYTES") or cls.max_body_bytes),
            fetch_timeout=float(env("FEEDMILL_FETCH_TIMEOUT") or cls.fetch_timeout),
            fetch_deadline=float(env("FEEDMILL_FETCH_DEADLINE") or cls.fetch_deadline),
            max_redirects=int(env("FEEDMILL_MAX_REDIRECTS") or cls.max_redirects),
            poll_interval=int(env("FEEDMILL_POLL_INTERVAL") or cls.poll_interval),
            dispatch_every=float(env("FEEDMILL_DISPATCH_EVERY") or cls.dispatch_every),
            lease_seconds=int(env("FEEDMILL_LEASE_SECONDS") or cls.lease_seconds),
            batch_size=int(env("FEEDMILL_BATCH_SIZE") or cls.batch_size),
        )

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"


def setting_names() -> list[str]:
    """Names of all settings, for the configuration reference and its test."""
    return [f.name for f in fields(Settings)]


@cache
def current_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings.from_env()
