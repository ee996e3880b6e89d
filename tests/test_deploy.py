"""The Procfile runs under honcho; docker-compose.yml is valid and every service has a healthcheck."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT


def test_procfile_is_valid_for_honcho() -> None:
    honcho = Path(sys.executable).with_name("honcho")
    result = subprocess.run([str(honcho), "check"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Valid procfile detected (web, fetch_worker, article_worker, scheduler, flower)" in result.stderr


def test_compose_file_is_valid_with_a_healthcheck_per_service() -> None:
    if shutil.which("docker-compose") is None:  # .ci/run installs it
        message = "docker-compose is not installed (apt-get install -y docker-compose)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    def compose(*args: str) -> str:
        result = subprocess.run(["docker-compose", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    compose("config", "-q")
    services = compose("config", "--services").split()
    assert set(services) == {"redis", "postgres", "migrate", "worker-feeds", "worker-articles", "scheduler", "flower", "web"}
    assert compose("config").count("    healthcheck:\n") == len(services)
