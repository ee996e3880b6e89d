"""The embedded broker between real processes: every message delivered once, none half-read."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from queue import Empty

from kombu import Connection

TRANSPORT = "workers.embedded_broker:Transport"


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
