"""Helpers every command module shares."""

from __future__ import annotations

from datetime import datetime

from schemas.db import migrate
from schemas.settings import Settings, current_settings


def migrated_settings() -> Settings:
    """The process settings, with the database schema brought up to date."""
    settings = current_settings()
    migrate(settings)
    return settings


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, or None."""
    return value.isoformat().replace("+00:00", "Z") if value else None
