"""Webhook delivery: the delivery issue's scenario under `feedmill run`, and the sending rate.

    .venv/bin/python benchmarks/delivery.py [--scenario service|throughput|worker|all] [--events 5000]
        [--backend sqlite|postgres] [--json]

- ``service``: an empty folder, the embedded default (SQLite, the filesystem broker), six feeds of
  50 entries from a local publisher, and a webhook subscription to a local receiver that answers
  its first 3 calls with 500 and stalls its 7th for 15 s (past the 10 s timeout). Measured: the
  seconds from `feedmill run`'s start until the receiver has acknowledged all 300 articles, and
  whether every call's signature verified and every retried `webhook-id` carried the same body.
- ``throughput``: ``--events`` pending events stored directly for one subscription, then sent by
  ``tasks.deliver.run_send`` in this process (as one worker process would) to a receiver answering
  204 at once, on SQLite or (``--backend postgres``) a fresh PostgreSQL database. Measured: events
  per second.
- ``worker``: the same events on PostgreSQL, sent by a real ``feedmill worker --queues deliver``
  with a Redis broker (``FEEDMILL_BENCH_REDIS_URL``, DB 12 by default), woken by one ``send``
  message: the whole path of the production set-up. Measured: events per second from that message.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from corpus import build_corpus, render_rss
from publisher import Publisher
from receiver import Receiver
from standardwebhooks.webhooks import Webhook

FEEDS, ENTRIES = 6, 50
ADMIN_URL = os.environ.get("FEEDMILL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FEEDMILL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
TIMEOUT = 240.0


def feedmill(home: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "workers", *args], env=env, cwd=home, capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"feedmill {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def scenario_service() -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="feedmill-delivery-"))
    env = {**os.environ, "FEEDMILL_HOME": str(home / "var"), "FEEDMILL_ALLOW_PRIVATE_NETWORKS": "1"}
    for name in ("FEEDMILL_DATABASE_URL", "FEEDMILL_BROKER_URL"):
        env.pop(name, None)
    publisher = Publisher(["127.0.0.1"])
    receiver = Receiver({1: 500, 2: 500, 3: 500, 7: "stall"})
    service = None
    try:
        corpus = build_corpus(FEEDS, ENTRIES, None)
        urls = []
        for number, entries in enumerate(corpus.feeds):
            publisher.publish(f"/feed{number}.xml", render_rss(f"Feed {number}", f"https://n{number}.example/", entries))
            urls.append(f"http://127.0.0.1:{publisher.port}/feed{number}.xml")
        feedmill(home, env, "feeds", "add", *urls)
        added = feedmill(home, env, "subscriptions", "add", "everything", "--webhook", receiver.url)
        secret = added.rsplit(": ", 1)[1].strip()
        started = time.monotonic()
        service = subprocess.Popen([sys.executable, "-m", "workers", "run"], env=env, cwd=home,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        stored = FEEDS * ENTRIES
        while len(receiver.acknowledged()) < stored and time.monotonic() - started < TIMEOUT:
            time.sleep(0.2)
        took = time.monotonic() - started
        acknowledged = len(receiver.acknowledged())
        verifier = Webhook(secret)
        bodies: dict[str, set[bytes]] = {}
        verified = 0
        for call in list(receiver.calls):
            verifier.verify(call["body"], call["headers"])
            verified += 1
            bodies.setdefault(call["headers"]["webhook-id"], set()).add(call["body"])
        return {
            "articles": stored, "acknowledged": acknowledged, "seconds_to_all_acknowledged": round(took, 1),
            "calls": len(receiver.calls), "signatures_verified": verified,
            "retries_with_same_body": all(len(b) == 1 for b in bodies.values()),
            "events": len(bodies),
        }
    finally:
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(service.pid, signal.SIGKILL)
        receiver.close()
        publisher.close()
        shutil.rmtree(home, ignore_errors=True)


def scenario_throughput(events: int, backend: str, worker: bool = False) -> dict[str, Any]:
    """``events`` pending events of one subscription, sent by ``run_send`` in this process, or
    (``worker``) by a real ``feedmill worker --queues deliver`` on PostgreSQL and Redis, woken by
    one ``send`` message (each send task hands on to the next through the broker)."""
    home = Path(tempfile.mkdtemp(prefix="feedmill-delivery-rate-"))
    database_url, database = f"sqlite:///{home / 'feedmill.db'}", None
    if backend == "postgres":
        import psycopg

        database = f"feedmill_bench_delivery_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        database_url = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    os.environ.update(FEEDMILL_HOME=str(home), FEEDMILL_DATABASE_URL=database_url,
                      FEEDMILL_BROKER_URL=REDIS_URL if worker else "filesystem://localhost/")
    from schemas.db import get_engine, migrate, session_scope
    from schemas.models import Delivery, Subscription, utcnow
    from schemas.settings import Settings
    from tasks.deliver import new_secret, run_send

    settings = Settings.from_env()
    migrate(settings)
    receiver = Receiver(status=204)
    process = None
    try:
        now = utcnow()
        body = json.dumps({"type": "article.created", "timestamp": "2026-12-07T00:00:00Z",
                           "data": {"id": 1, "title": "x" * 200, "text": "word " * 400}})
        with session_scope(settings) as session:
            subscription = Subscription(name="rate", kind="webhook", target=receiver.url, secret=new_secret(),
                                        status="active")
            session.add(subscription)
            session.flush()
            session.execute(Delivery.__table__.insert(), [
                {"subscription_id": subscription.id, "article_id": None, "event_type": "article.created",
                 "event_id": f"msg_{uuid.uuid4().hex}", "digest": str(i), "body": body, "status": "pending",
                 "attempts": 0, "next_attempt_at": now, "created_at": now}
                for i in range(events)
            ])
            subscription_id = subscription.id
        if worker:
            process, log = start_deliver_worker(home)
            from tasks.base import send
            from workers.celery_app import app  # noqa: F401 - configures the broker send() uses

            started = time.perf_counter()
            send("send", {"subscription_id": subscription_id})
            while len(receiver.calls) < events and time.perf_counter() - started < TIMEOUT:
                time.sleep(0.01)
        else:
            started = time.perf_counter()
            while run_send(settings, subscription_id):
                pass
        seconds = time.perf_counter() - started
        return {"backend": backend + (" + redis, feedmill worker" if worker else ", in process"), "events": events,
                "received": len(receiver.calls), "seconds": round(seconds, 2),
                "events_per_second": round(len(receiver.calls) / seconds), "body_bytes": len(body)}
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
        receiver.close()
        shutil.rmtree(home, ignore_errors=True)
        if database:
            import psycopg

            get_engine(database_url).dispose()
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def start_deliver_worker(home: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """``feedmill worker --queues deliver``, waited for until ready."""
    log = home / "worker.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "workers", "worker", "--queues", "deliver", "--concurrency", "2"],
                                   env=os.environ.copy(), cwd=home, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "ready." not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return process, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("service", "throughput", "worker", "all"), default="all")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite", help="for throughput")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {}
    if args.scenario in ("service", "all"):
        report["service"] = scenario_service()
    if args.scenario in ("throughput", "all"):
        report["throughput"] = scenario_throughput(args.events, args.backend)
    if args.scenario in ("worker", "all"):
        report["worker"] = scenario_throughput(args.events, "postgres", worker=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, figures in report.items():
            print(f"{name}: " + ", ".join(f"{key} {value}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
