"""The Procfile runs under honcho; docker-compose.yml is valid and every service has a healthcheck; the
systemd unit verifies and agrees with the Procfile."""

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


def test_systemd_unit_verifies_and_runs_what_the_procfile_runs(tmp_path: Path) -> None:
    """feedmill.service: systemd accepts it (no warning either), its command line is one the CLI
    accepts, it serves the web endpoint on the Procfile's port, and its stop gives the workers'
    warm shutdown time before systemd kills what is left."""
    import configparser
    import re

    import click

    from workers.cli import cli
    from workers.service import WORKER_STOP_GRACE

    if shutil.which("systemd-analyze") is None:
        message = "systemd-analyze is not installed (apt-get install -y systemd)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    text = (ROOT / "feedmill.service").read_text()
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    service = unit["Service"]
    executable, command, *args = service["ExecStart"].split()
    assert executable.endswith("/bin/feedmill")
    with click.Context(cli, info_name="feedmill") as parent:
        cli.get_command(parent, command).make_context(command, list(args), parent=parent)  # raises if refused
    procfile_port = re.search(r"^web: feedmill web --port \$\{PORT:-(\d+)\}$", (ROOT / "Procfile").read_text(), re.M)
    assert procfile_port and args[args.index("--web-port") + 1] == procfile_port.group(1)
    assert (service["KillMode"], service["KillSignal"], service["Restart"]) == ("mixed", "SIGTERM", "always")
    assert float(service["TimeoutStopSec"]) > WORKER_STOP_GRACE

    local = tmp_path / "feedmill.service"
    local.write_text(text.replace(executable, str(Path(sys.executable).with_name("feedmill"))))
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
