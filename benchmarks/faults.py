"""How long `feedmill run` takes to heal: the service issue's three scenarios, with default settings.

    .venv/bin/python benchmarks/faults.py [--scenario kills|redis|once|all] [--seed 1] [--json]

Each scenario starts from an empty folder, a fresh PostgreSQL database on the machine's server
(``FEEDMILL_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``) and a
``redis-server`` of its own on a free port (so it can be killed); feeds come from a local publisher
that takes ``--delay`` seconds to answer each one, so the run lasts long enough to be hit. Only
``FEEDMILL_ALLOW_PRIVATE_NETWORKS=1`` differs from what an operator gets: the sweeper, the
recovery look, leases and politeness keep their defaults.

- ``kills``: six feeds of 50 entries; 12 times, 1.5 s apart (or as soon as a child is running
  again, when every one is waiting out its restart backoff), SIGKILL a random process of the
  service's group other than `feedmill run` itself (a worker's pool process, its main process or
  celery beat). Measured: seconds from the last kill until all 300 entries are stored once with
  every stage done, the restarts `status --json` counts, and how long SIGTERM then takes to stop
  everything (and whether any process of the group is left).
- ``redis``: the same feeds; 5 s into the run the broker is killed and started again empty (no
  persistence). Measured: seconds from Redis answering again until all 300 are done.
- ``once``: `run --once` over the seed feed (examples/seed-news.xml) and a feed that answers 404.
  Measured: wall time, exit code, and whether the summary names the failing feed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from corpus import build_corpus, render_rss
from publisher import Publisher, loopback_address

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("FEEDMILL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
FEEDS, ENTRIES = 6, 50
KILLS, KILL_EVERY = 12, 1.5
DONE_TIMEOUT = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition()`` holds; raises after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not reached after {timeout:g} s")
        time.sleep(0.1)
    return time.monotonic() - started


class Redis:
    """A ``redis-server`` of this benchmark's own, without persistence, which it kills and restarts."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, 20, "redis-server start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


class Store:
    """A fresh PostgreSQL database, dropped at the end."""

    def __init__(self) -> None:
        self.name = f"feedmill_faults_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = ADMIN_URL.rsplit("/", 1)[0] + f"/{self.name}"

    def done(self) -> tuple[int, int]:
        """(articles stored, distinct entries done with every stage)."""
        with psycopg.connect(self.url) as conn:
            stored, done = conn.execute(
                "SELECT count(*), count(DISTINCT (feed_id, entry_key)) FILTER (WHERE stage = 'done' AND status = 'ok') "
                "FROM articles").fetchone()
        return stored, done

    def drop(self) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Service:
    """A real `feedmill run` in a process group of its own, in an empty folder."""

    def __init__(self, home: Path, env: dict[str, str], *args: str) -> None:
        self.home, self.env = home, env
        self.log = home / "run.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "workers", "run", *args], env=env, cwd=home,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def group(self) -> list[int]:
        """Live processes of the service's group other than `feedmill run` itself."""
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.process.pid and fields[0] != "Z" and int(entry) != self.process.pid:
                found.append(int(entry))
        return found

    def status(self) -> dict:
        result = subprocess.run([sys.executable, "-m", "workers", "status", "--json"], env=self.env, cwd=self.home,
                                capture_output=True, text=True, timeout=120)
        return json.loads(result.stdout)

    def terminate(self) -> float:
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        return time.monotonic() - started

    def kill_all(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def setup(home: Path, redis: Redis, store: Store, publisher: Publisher, delay: float) -> dict[str, str]:
    """Publish the feeds, add them with `feeds add`; return the service's environment."""
    env = {**os.environ, "FEEDMILL_HOME": str(home), "FEEDMILL_DATABASE_URL": store.url,
           "FEEDMILL_BROKER_URL": redis.url, "FEEDMILL_ALLOW_PRIVATE_NETWORKS": "1"}
    corpus = build_corpus(FEEDS, ENTRIES, None)
    urls = []
    for number, entries in enumerate(corpus.feeds):
        path = f"/feed{number}.xml"
        publisher.publish(path, render_rss(f"Feed {number}", f"https://news{number}.example/", entries), delay=delay)
        urls.append(f"http://{publisher.addresses[number % len(publisher.addresses)]}:{publisher.port}{path}")
    subprocess.run([sys.executable, "-m", "workers", "feeds", "add", *urls], env=env, cwd=home, check=True,
                   capture_output=True, timeout=120)
    return env


def scenario_kills(home: Path, redis: Redis, store: Store, publisher: Publisher, delay: float, seed: int) -> dict:
    env = setup(home, redis, store, publisher, delay)
    service = Service(home, env)
    rng = random.Random(seed)
    wait_for(lambda: "ready." in service.log.read_text(errors="replace"), 60, "worker ready")
    killed: list[str] = []
    while len(killed) < KILLS:
        time.sleep(KILL_EVERY)
        # Both children may be waiting out their restart backoff: the next kill waits for one.
        wait_for(lambda: bool(service.group()), 60, "a child to kill")
        pid = rng.choice(service.group())
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                words = cmdline.read().replace(b"\0", b" ").decode()
            with open(f"/proc/{pid}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            os.kill(pid, signal.SIGKILL)
        except OSError:  # it ended between the listing and the kill: pick again
            continue
        killed.append("beat" if " beat " in words else "worker main" if parent == service.process.pid
                      else "worker pool" if " worker " in words else "other")
    last_kill = time.monotonic()
    stored_at_last_kill = store.done()[1]
    expected = FEEDS * ENTRIES
    first = wait_for(lambda: store.done()[0] > 0, DONE_TIMEOUT, "a first entry stored")
    recovered = first + wait_for(lambda: store.done()[1] >= expected, DONE_TIMEOUT, "all entries done")
    stored, done = store.done()
    alive = service.process.poll() is None
    restarts = {child["name"]: child["restarts"] for child in service.status().get("service", [])}
    stop = service.terminate()
    return {
        "kills": len(killed), "killed": {kind: killed.count(kind) for kind in sorted(set(killed))},
        "done_at_last_kill": stored_at_last_kill, "stored": stored, "done": done, "expected": expected,
        "first_stored_after_last_kill": round(first, 1),
        "seconds_after_last_kill": round(recovered, 1), "service_alive": alive, "restarts": restarts,
        "sigterm_seconds": round(stop, 1), "exit_code": service.process.returncode,
        "left_in_group": len(service.group()), "_since": last_kill,
    }


def scenario_redis(home: Path, redis: Redis, store: Store, publisher: Publisher, delay: float) -> dict:
    env = setup(home, redis, store, publisher, delay)
    service = Service(home, env)
    started = time.monotonic()
    wait_for(lambda: "ready." in service.log.read_text(errors="replace"), 60, "worker ready")
    time.sleep(max(0.0, 5 - (time.monotonic() - started)))
    done_before = store.done()[1]
    redis.kill()
    redis.start()
    answering = time.monotonic()
    expected = FEEDS * ENTRIES
    recovered = wait_for(lambda: store.done()[1] >= expected, DONE_TIMEOUT, "all entries done")
    stored, done = store.done()
    alive = service.process.poll() is None
    stop = service.terminate()
    return {
        "done_at_restart": done_before, "stored": stored, "done": done, "expected": expected,
        "seconds_after_redis_answered": round(recovered, 1), "service_alive": alive,
        "sigterm_seconds": round(stop, 1), "left_in_group": len(service.group()),
        "_since": answering,
    }


def scenario_once(home: Path, redis: Redis, store: Store, publisher: Publisher) -> dict:
    env = {**os.environ, "FEEDMILL_HOME": str(home), "FEEDMILL_DATABASE_URL": store.url,
           "FEEDMILL_BROKER_URL": redis.url, "FEEDMILL_ALLOW_PRIVATE_NETWORKS": "1"}
    publisher.publish("/seed.xml", (ROOT / "examples" / "seed-news.xml").read_bytes())
    seed, missing = (f"http://127.0.0.1:{publisher.port}{path}" for path in ("/seed.xml", "/gone.xml"))
    subprocess.run([sys.executable, "-m", "workers", "feeds", "add", seed, missing], env=env, cwd=home,
                   capture_output=True, timeout=120)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "workers", "run", "--once"], env=env, cwd=home,
                            capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    return {"seconds": round(took, 1), "exit_code": result.returncode, "names_failing_feed": missing in result.stdout
            + result.stderr, "stored": store.done()[0]}


def kill_processes_in(folder: Path) -> None:
    """SIGKILL whatever still runs in ``folder`` (after a scenario that failed half-way)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(os.readlink(f"/proc/{entry}/cwd")) == folder:
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            continue


def run(name: str, seed: int, delay: float, hosts: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"feedmill-faults-{name}-"))
    (home / "redis").mkdir()
    redis, store = Redis(home / "redis"), Store()
    publisher = Publisher([loopback_address(index) for index in range(hosts)])
    work = home / "service"
    work.mkdir()
    try:
        if name == "kills":
            return scenario_kills(work, redis, store, publisher, delay, seed)
        if name == "redis":
            return scenario_redis(work, redis, store, publisher, delay)
        return scenario_once(work, redis, store, publisher)
    finally:
        kill_processes_in(work)
        publisher.close()
        redis.kill()
        store.drop()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("kills", "redis", "once", "all"), default="all")
    parser.add_argument("--seed", type=int, default=1, help="Which processes the kills hit.")
    parser.add_argument("--delay", type=float, default=2.0, help="Seconds the publisher takes per feed.")
    parser.add_argument("--hosts", type=int, default=FEEDS,
                        help="Loopback hosts the feeds are spread over (default: one per feed).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = ("kills", "redis", "once") if args.scenario == "all" else (args.scenario,)
    report = {}
    for name in names:
        result = run(name, args.seed, args.delay, args.hosts)
        report[name] = {key: value for key, value in result.items() if not key.startswith("_")}
        if not args.json:
            print(f"{name}: " + ", ".join(f"{key} {value}" for key, value in report[name].items()), flush=True)
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
