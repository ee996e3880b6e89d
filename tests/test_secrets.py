"""Passwords in the database and broker URLs never reach a log line or a command's output.

The test owns both secrets: a ``redis-server --requirepass`` on a free port and a PostgreSQL
role with a password, owning a fresh database (the server trusts local connections, so the
password is accepted whatever it is, but it is in every URL feedmill is given). It runs the
command line (migrate, feeds add/list, run --once with its worker, status, healthcheck, failures,
requeue --dry-run, export), a scheduler, the error paths most likely to print a URL (database
unreachable, broker refusing the password, broker down: status, healthcheck, feeds list) and a
worker that cannot log in to its broker, then searches every output and every log file under
the test's home (run --once's worker log, the scheduler's, the refused worker's) for the passwords.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from schemas.settings import Settings
from tests.conftest import (
    POSTGRES_ADMIN_URL,
    Publisher,
    feedmill_env,
    free_port,
    make_settings,
    require_service,
)
from tests.test_faults import RedisServer, SchedulerProcess, publish, wait_until

DB_SECRET = f"pgS3cret{uuid.uuid4().hex[:10]}"
BROKER_SECRET = f"rdS3cret{uuid.uuid4().hex[:10]}"
WRONG_SECRET = f"wrongS3cret{uuid.uuid4().hex[:10]}"
SECRETS = (DB_SECRET, BROKER_SECRET, WRONG_SECRET)


@pytest.fixture
def secret_database_url() -> Iterator[str]:
    """A fresh database owned by a fresh role whose URL carries DB_SECRET; both dropped afterwards."""
    require_service("PostgreSQL", lambda: psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close())
    suffix = uuid.uuid4().hex[:12]
    role, name = f"feedmill_secret_{suffix}", f"feedmill_test_{suffix}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(DB_SECRET)))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
    url = make_url(POSTGRES_ADMIN_URL).set(username=role, password=DB_SECRET, database=name)
    yield url.render_as_string(hide_password=False)
    from schemas.db import get_engine, normalize_url

    get_engine(normalize_url(url.render_as_string(hide_password=False))).dispose()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def secret_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=BROKER_SECRET)
    yield server
    server.stop()


#: Runs several ``feedmill`` commands in one process, each through the real entry point
#: (``workers.cli.main``: its error handling included), because each process costs seconds of
#: imports. One process per configuration: settings and the Celery app are read once per process.
DRIVER = """
import json, sys
from workers.cli import main
for argv in json.loads(sys.argv[1]):
    print("==> feedmill " + " ".join(argv), flush=True)
    sys.argv = ["feedmill", *argv]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    print(f"<== exit {code}", flush=True)
"""


class Commands:
    """``feedmill`` commands for one configuration, run in one child process; output kept."""

    def __init__(self, settings: Settings, name: str, commands: list[tuple[str, ...]]) -> None:
        self.name, self.commands = name, commands
        self.out = settings.home / f"cli-{name}.out"
        with open(self.out, "wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-c", DRIVER, json.dumps(commands)],
                env=feedmill_env(settings), cwd=settings.home, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, with run --once's worker: killed together
            )

    def finish(self, timeout: float = 180) -> dict[tuple[str, ...], tuple[int, str]]:
        """Each command's exit code and output."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            pytest.fail(f"{self.name} did not finish:\n{self.out.read_text(errors='replace')}")
        text = self.out.read_text(errors="replace")
        results = {}
        for command, block in zip(self.commands, text.split("==> feedmill ")[1:], strict=True):
            body, _, code = block.rpartition("<== exit ")
            results[command] = (int(code.split()[0]) if code.split()[0].isdigit() else 1, body)
        assert len(results) == len(self.commands), text
        return results


def test_no_password_in_logs_or_output(
    tmp_path: Path, secret_database_url: str, secret_redis: RedisServer, publisher: Publisher,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    settings = make_settings(home, secret_database_url, secret_redis.url())
    assert DB_SECRET in settings.database_url and BROKER_SECRET in settings.broker_url
    closed = free_port()
    no_database = make_settings(home, make_url(secret_database_url).set(port=closed).render_as_string(hide_password=False),
                                secret_redis.url())
    wrong_password = make_settings(home, secret_database_url, secret_redis.url().replace(BROKER_SECRET, WRONG_SECRET))
    broker_down = make_settings(home, secret_database_url, f"redis://:{BROKER_SECRET}@127.0.0.1:{closed}/0")
    expected = publish(publisher, feeds=2, items=3, delay=0, prefix="secret")

    # The happy path, with a scheduler alongside (its banner prints the broker): every command
    # that prints the configuration or touches both services, and run --once with its worker.
    scheduler = SchedulerProcess(settings)
    happy = Commands(settings, "happy", [
        ("migrate",), ("feeds", "add", *expected), ("feeds", "list"), ("feeds", "list", "--json"),
        ("run", "--once", "--json", "--concurrency", "1"),
        ("status",), ("status", "--json"), ("healthcheck",), ("healthcheck", "--json"),
        ("failures", "list"), ("failures", "list", "--json"), ("requeue", "failed", "--dry-run"),
        ("export", "--format", "jsonl"),
    ])
    try:
        results = happy.finish()
        wait_until(lambda: "beat: Starting" in scheduler.output(), 60, scheduler.output)
    finally:
        scheduler.stop()
    for command, (code, text) in results.items():
        assert code == 0, f"feedmill {' '.join(command)} exited {code}:\n{text}"
    assert "***" in results[("migrate",)][1]  # the URL is printed, its password hidden
    assert '"articles_done": 6' in results[("run", "--once", "--json", "--concurrency", "1")][1]

    # The error paths: the database away, the broker refusing the password, the broker away;
    # and a worker that cannot log in to its broker, which keeps retrying and says why.
    refused_log = home / "worker-wrong-password.log"
    with open(refused_log, "wb") as log:
        refused = subprocess.Popen([sys.executable, "-m", "workers", "worker", "--concurrency", "1"],
                                   env=feedmill_env(wrong_password), cwd=home, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    failing = [
        Commands(no_database, "no-database", [("feeds", "list"), ("status",)]),
        Commands(wrong_password, "wrong-password", [("status",), ("healthcheck",)]),
        Commands(broker_down, "broker-down", [("status", "--json"), ("healthcheck", "--json")]),
    ]
    try:
        for commands in failing:
            for command, (code, text) in commands.finish().items():
                results[(commands.name, *command)] = (code, text)
                if command[0] == "healthcheck" or commands.name == "no-database":
                    assert code != 0, text
        wait_until(lambda: "Cannot connect" in refused_log.read_text(errors="replace"), 90,
                   lambda: refused_log.read_text(errors="replace"))
    finally:
        os.killpg(refused.pid, signal.SIGKILL)  # with its pool process, if it started one
        refused.wait()
    assert "invalid username-password pair" in results[("wrong-password", "healthcheck")][1]

    outputs = {" ".join(command): text for command, (_, text) in results.items()}
    logs = {str(path): path.read_text(errors="replace") for path in sorted(home.rglob("*.log"))}
    assert any("/logs/worker-" in name for name in logs), list(logs)  # run --once's worker log
    assert "redis://:**@" in scheduler.output() and "redis://:**@" in refused_log.read_text()  # URLs shown, masked
    leaks = [(where, secret) for where, text in {**outputs, **logs}.items() for secret in SECRETS if secret in text]
    assert not leaks, f"passwords found in: {leaks}"
