"""The embedded broker between real processes: every message delivered once, none half-read."""

from __future__ import annotations

import multiprocessing
import re
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from queue import Empty

from kombu import Connection

from schemas.settings import Settings
from tests.conftest import WorkerProcess, use_broker

TRANSPORT = "workers.embedded_broker:Transport"
LOG_TIME = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+):")


def _connection(folder: str) -> Connection:
    queue = str(Path(folder) / "queue")
    options = {
        "data_folder_in": queue,
        "data_folder_out": queue,
        "control_folder": str(Path(folder) / "control"),
        "polling_interval": 0,
    }
    return Connection("filesystem://localhost/", transport=TRANSPORT, transport_options=options)


def _produce(folder: str, first: int, count: int) -> None:
    with _connection(folder) as connection:
        queue = connection.SimpleQueue("jobs")
        for number in range(first, first + count):
            queue.put({"n": number, "padding": "x" * 300_000})  # big enough to be caught half-written


def _consume(folder: str, results: multiprocessing.Queue) -> None:
    seen = []
    with _connection(folder) as connection:
        queue = connection.SimpleQueue("jobs")
        while True:
            try:
                message = queue.get(timeout=3)
            except Empty:
                break
            seen.append(message.payload["n"])
            message.ack()
    results.put(seen)


def test_concurrent_producers_and_consumers_lose_and_double_nothing(tmp_path: Path) -> None:
    for name in ("queue", "control"):
        (tmp_path / name).mkdir()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    consumers = [context.Process(target=_consume, args=(str(tmp_path), results)) for _ in range(3)]
    producers = [context.Process(target=_produce, args=(str(tmp_path), n * 200, 200)) for n in range(3)]
    for process in consumers + producers:
        process.start()
    delivered = [n for _ in consumers for n in results.get(timeout=120)]
    for process in consumers + producers:
        process.join(30)
    assert sorted(delivered) == list(range(600))
    assert list((tmp_path / "queue").iterdir()) == []


def test_worker_takes_next_message_soon_after_a_task(
    sqlite_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    """With one pool process its prefetch window is full while a task runs, and kombu then sleeps its
    polling interval: the gap between one task's end and the next one's receipt is that sleep."""
    from tasks.fetch import fetch_task

    worker = start_worker(sqlite_settings, concurrency=1, queues="fetch")
    use_broker(sqlite_settings)
    for poll_id in range(1_000_000, 1_000_040):  # no such polls: each task returns at once
        fetch_task.delay({"poll_id": poll_id})
    deadline = time.monotonic() + 60
    while worker.output().count("succeeded in") < 40:
        assert time.monotonic() < deadline, worker.output()
        time.sleep(0.2)
    events = [(LOG_TIME.match(line), line) for line in worker.output().splitlines() if "feedmill.fetch[" in line]
    stamps = [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), "succeeded" in line) for m, line in events if m]
    gaps = [
        (after - before).total_seconds()
        for (before, done), (after, next_done) in zip(stamps, stamps[1:])
        if done and not next_done
    ]
    assert len(gaps) >= 30
    assert statistics.median(gaps) < 0.05, gaps
