"""The configuration reference lists every setting and its variable."""

from __future__ import annotations

from schemas.db import redact_url
from schemas.settings import Settings, setting_names
from tests.conftest import ROOT


def test_every_setting_is_documented() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for name in setting_names():
        assert f"| `{name}` | `FEEDMILL_{name.upper()}` |" in reference, name


def test_environment_is_read(monkeypatch) -> None:
    monkeypatch.setenv("FEEDMILL_HOME", "/srv/feedmill")
    monkeypatch.setenv("FEEDMILL_ALLOW_PRIVATE_NETWORKS", "yes")
    monkeypatch.setenv("FEEDMILL_BATCH_SIZE", "50")
    settings = Settings.from_env()
    assert settings.database_url == "sqlite:////srv/feedmill/feedmill.db"
    assert settings.broker_url == "filesystem://localhost/" and settings.embedded_broker
    assert settings.allow_private_networks and settings.batch_size == 50


def test_passwords_are_redacted() -> None:
    assert redact_url("postgresql://feedmill:s3cret@db:5432/feedmill") == "postgresql://feedmill:***@db:5432/feedmill"
