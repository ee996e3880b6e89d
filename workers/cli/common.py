"""Helpers every command module shares."""

from __future__ import annotations

import click
from sqlalchemy.orm import Session

from schemas.db import migrate
from schemas.models import Feed
from schemas.settings import Settings, current_settings
from tasks.storage.feeds import feed_by_url
from tasks.storage.reading import iso  # noqa: F401  (the commands' one date format)


def migrated_settings() -> Settings:
    """The process settings, with the database schema brought up to date."""
    settings = current_settings()
    migrate(settings)
    return settings


def find_feed(session: Session, url: str) -> Feed:
    """The feed with this URL; a one-line error naming it if there is none."""
    feed = feed_by_url(session, url)
    if feed is None:
        raise click.ClickException(f"no feed {url.strip()} (see: feedmill feeds list; add one with: feedmill feeds add URL)")
    return feed


