"""End-to-end throughput: feedmill's whole pipeline against the `reader` library, on the same feeds.

    .venv/bin/python benchmarks/pipeline.py [--feeds 200] [--entries 50] [--corpus ../shared/data/bbc]
        [--backends embedded,postgres+redis] [--inline] [--webhook] [--concurrency 2] [--profile DIR] [--json]

Builds N feeds of M entries (see ``corpus.py``), serves them from a local
publisher that answers conditional GETs (``publisher.py``), one loopback
address per feed, then for each backend: adds the feeds with ``feedmill feeds
add``, starts ``feedmill worker`` and waits until it is ready, runs ``feedmill
run --once --no-workers`` (fetch, parse, clean, dedupe, classify, store) and
then a second pass over the unchanged feeds, sampling the RSS of every worker
process. ``--inline`` also runs the same stage functions as plain calls in one
process on the same kind of database (no Celery): the limit Celery's overhead
is measured against. The peer, `reader`, runs ``update_feeds(workers=4)``
into its own SQLite file, twice. Per-stage times are per article: each task's
(or, inline, each call's) time divided by its batch of articles, taken from the
worker log's ``succeeded in`` lines. ``--webhook`` runs each backend's Celery pass a second time,
in a fresh store, with one webhook subscription that every article matches, to a local receiver
answering 204 (``receiver.py``): the same workers then also make the events and send them while
they ingest, and ``<backend> + webhook / <backend>`` is the throughput kept (target: 0.9).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
from corpus import build_corpus, render_rss
from publisher import Publisher, loopback_address
from receiver import Receiver

from schemas.pipeline import LINE

STAGES = LINE
POSTGRES_ADMIN_URL = os.environ.get("FEEDMILL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FEEDMILL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
TASK_DONE = re.compile(r"Task feedmill\.(\w+)\[[^\]]+\] succeeded in ([0-9.e-]+)s")
MiB = 1024 * 1024


# ------------------------------------------------------------------ measuring


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }


def per_article(samples: list[tuple[float, int]]) -> dict[str, float | int]:
    """Median and p95 of milliseconds per article over (seconds, articles) samples, one per task."""
    values = sorted(1000 * seconds / articles for seconds, articles in samples if articles)
    if not values:
        return {"median_ms": 0.0, "p95_ms": 0.0, "tasks": 0}
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return {"median_ms": round(statistics.median(values), 3), "p95_ms": round(p95, 3), "tasks": len(values)}


def stages_from_log(log: str, articles: int) -> dict[str, dict[str, float | int]]:
    """Per-stage time per article from a worker log: each task's runtime over its stage's mean batch."""
    runtimes: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for stage, seconds in TASK_DONE.findall(log):
        if stage in runtimes:
            runtimes[stage].append(float(seconds))
    result = {}
    for stage, values in runtimes.items():
        batch = articles / len(values) if values else 0
        result[stage] = per_article([(seconds, batch) for seconds in values])  # type: ignore[misc]
    return result


class MemorySampler:
    """Peak RSS of a process and each of its descendants, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                for process in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        rss = process.memory_info().rss
                        self.peaks[process.pid] = max(rss, self.peaks.get(process.pid, 0))

    def stop(self) -> dict[str, float | int]:
        self.stopping.set()
        self.thread.join()
        pool = [rss for pid, rss in self.peaks.items() if pid != self.root.pid]
        return {
            "main_mb": round(self.peaks.get(self.root.pid, 0) / MiB, 1),
            "pool_max_mb": round(max(pool, default=0) / MiB, 1),
            "pool_processes": len(pool),
        }


# ------------------------------------------------------------------ the feeds


def serve_corpus(args: argparse.Namespace) -> tuple[Publisher, list[str], dict[str, object]]:
    corpus = build_corpus(args.feeds, args.entries, args.corpus, seed=args.seed)
    publisher = Publisher([loopback_address(i) for i in range(args.feeds)])
    urls = []
    for index, entries in enumerate(corpus.feeds):
        path = f"/feeds/{index}.xml"
        publisher.publish(path, render_rss(f"Benchmark feed {index}", f"https://news{index}.example/", entries))
        urls.append(f"http://{loopback_address(index)}:{publisher.port}{path}")
    described = {
        "feeds": args.feeds,
        "entries_per_feed": args.entries,
        "entries": corpus.entries,
        "text": str(args.corpus) if args.corpus else "generated",
        "planted_duplicates": corpus.duplicates,
        "planted_near_duplicates": corpus.near_duplicates,
        "bytes": sum(len(document.body) for document in publisher.documents.values()),
    }
    return publisher, urls, described


# ------------------------------------------------------------------ feedmill through Celery


@contextlib.contextmanager
def backend_store(backend: str, home: Path) -> Iterator[tuple[str, str]]:
    """(database URL, broker URL) for a backend: files under ``home``, or a fresh PostgreSQL database."""
    if backend == "embedded":
        yield f"sqlite:///{home / 'feedmill.db'}", "filesystem://localhost/"
        return
    import psycopg

    name = f"feedmill_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", REDIS_URL
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def feedmill_env(home: Path, database_url: str, broker_url: str) -> dict[str, str]:
    """The benchmark's settings: loopback allowed (the publisher is local), no linked-page fetches."""
    return {
        **os.environ,
        "FEEDMILL_HOME": str(home),
        "FEEDMILL_DATABASE_URL": database_url,
        "FEEDMILL_BROKER_URL": broker_url,
        "FEEDMILL_ALLOW_PRIVATE_NETWORKS": "1",
        "FEEDMILL_FULL_TEXT": "off",
    }


def feedmill(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "workers", *args], env=env, cwd=env["FEEDMILL_HOME"], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"feedmill {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def start_worker(env: dict[str, str], concurrency: int, log_path: Path) -> tuple[subprocess.Popen[bytes], float]:
    """``feedmill worker``, waited for until ready; returns it and its start-up seconds."""
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers", "worker", "--concurrency", str(concurrency)],
            env=env, cwd=env["FEEDMILL_HOME"], stdout=log, stderr=subprocess.STDOUT,
        )
    while "ready." not in log_path.read_text(errors="replace"):
        if worker.poll() is not None or time.perf_counter() - started > 120:
            stop(worker)
            raise RuntimeError(f"worker did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    return worker, time.perf_counter() - started


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Celery's warm shutdown), SIGKILL after 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_once(env: dict[str, str]) -> dict:
    return json.loads(feedmill(env, "run", "--once", "--no-workers", "--json"))


def run_celery(backend: str, urls: list[str], publisher: Publisher, args: argparse.Namespace, home: Path,
               receiver: Receiver | None = None) -> dict:
    """feedmill with Celery workers: a first pass over new feeds, a second over unchanged ones;
    with ``receiver``, a webhook subscription to it for every article."""
    with backend_store(backend, home) as (database_url, broker_url):
        env = feedmill_env(home, database_url, broker_url)
        feedmill(env, "feeds", "add", *urls)
        if receiver is not None:
            feedmill(env, "subscriptions", "add", "bench", "--webhook", receiver.url)
        log_path = home / "worker.log"
        worker, startup = start_worker(env, args.concurrency, log_path)
        try:
            publisher.take_answers()
            sampler = MemorySampler(worker.pid)
            first = run_once(env)
            memory = sampler.stop()
            first_log = log_path.read_text(errors="replace")
            delivered_in_pass = len(receiver.calls) if receiver else None
            answers = publisher.take_answers()
            second = run_once(env)
            second_answers = publisher.take_answers()
        finally:
            stop(worker)
    return {
        "entries": first["articles_new"],
        "seconds": first["seconds"],
        "entries_per_second": round(first["articles_new"] / first["seconds"], 1),
        "done": first["articles_done"],
        "failed": first["articles_failed"],
        "duplicates_found": first["duplicates"],
        "feed_errors": first["feed_errors"],
        "worker_start_seconds": round(startup, 2),
        "concurrency": args.concurrency,
        "stages": stages_from_log(first_log, first["articles_new"]),
        "peak_rss": memory,
        "http_answers": dict(answers),
        **({"webhook_calls_during_first_pass": delivered_in_pass} if receiver else {}),
        "second_pass": {
            "seconds": second["seconds"],
            "feeds": second["feeds_polled"],
            "not_modified": sum(1 for poll in second["polls"] if poll["status"] == "not_modified"),
            "http_answers": dict(second_answers),
            "entries": second["articles_new"] + second["articles_updated"],
        },
    }


# ------------------------------------------------------------------ children: inline feedmill, reader


def run_child(kind: str, env: dict[str, str], stdin: str = "", profile: Path | None = None) -> dict:
    command = [sys.executable, __file__, "--child", kind]
    if profile is not None:
        command += ["--profile", str(profile)]
    result = subprocess.run(command, env=env, input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout)


def run_inline(backend: str, urls: list[str], publisher: Publisher, home: Path, profile: Path | None) -> dict:
    with backend_store(backend, home) as (database_url, broker_url):
        env = feedmill_env(home, database_url, broker_url)
        feedmill(env, "feeds", "add", *urls)
        publisher.take_answers()
        report = run_child("inline", env, profile=profile / f"inline-{backend}.txt" if profile else None)
    report["http_answers"] = dict(publisher.take_answers())
    return report


def run_reader(urls: list[str], publisher: Publisher, home: Path) -> dict:
    publisher.take_answers()
    report = run_child("reader", {**os.environ, "BENCH_READER_DB": str(home / "reader.sqlite")}, json.dumps(urls))
    report["http_answers"] = dict(publisher.take_answers())
    return report


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def inline_child() -> dict:
    """The pipeline as plain calls, in task order, one process: fetch, parse, then each batch
    through clean, dedupe and classify; then a second pass (fetch only: everything is 304)."""
    from sqlalchemy import func, select

    from schemas.db import session_scope
    from schemas.models import FAILED, POLL_NOT_MODIFIED, Article, Poll
    from schemas.payloads import chunked
    from schemas.settings import Settings
    from tasks.classify import run_classify
    from tasks.clean.stage import run_clean
    from tasks.dedupe import run_dedupe
    from tasks.deliver import run_deliver
    from tasks.fetch import run_fetch
    from tasks.parse import run_parse
    from workers.scheduler import claim_feeds

    settings = Settings.from_env()
    samples: dict[str, list[tuple[float, int]]] = {stage: [] for stage in STAGES}

    def timed(stage: str, articles: int, call, *call_args):  # noqa: ANN001, ANN202
        started = time.perf_counter()
        result = call(*call_args)
        samples[stage].append((time.perf_counter() - started, articles))
        return result

    def fetch(poll_id: int):  # noqa: ANN202
        """``run_fetch``, waiting when the host is busy, as the task's countdown would."""
        while (step := run_fetch(settings, poll_id)).wait_seconds is not None:
            time.sleep(step.wait_seconds)
        return step

    started = time.perf_counter()
    entries = 0
    for poll_id in claim_feeds(settings, due_only=False, limit=10**6):
        fetch_started = time.perf_counter()
        step = fetch(poll_id)
        fetch_seconds = time.perf_counter() - fetch_started
        if not step.parse:
            continue
        parse_started = time.perf_counter()
        ids = run_parse(settings, poll_id)
        samples["parse"].append((time.perf_counter() - parse_started, len(ids)))
        samples["fetch"].append((fetch_seconds, len(ids)))
        entries += len(ids)
        for batch in chunked(ids, settings.batch_size):
            ready = timed("clean", len(batch), run_clean, settings, batch).ready
            ready = timed("dedupe", len(ready), run_dedupe, settings, ready).ready
            ready = timed("classify", len(ready), run_classify, settings, ready)
            timed("deliver", len(ready), run_deliver, settings, ready)
    seconds = time.perf_counter() - started
    with session_scope(settings) as session:
        failed = session.scalar(select(func.count()).where(Article.status == FAILED))
        duplicates = session.scalar(select(func.count()).where(Article.duplicate_of.is_not(None)))
    second_started = time.perf_counter()
    second_polls = claim_feeds(settings, due_only=False, limit=10**6)
    for poll_id in second_polls:
        fetch(poll_id)
    second_seconds = time.perf_counter() - second_started
    with session_scope(settings) as session:
        not_modified = session.scalar(
            select(func.count()).where(Poll.id.in_(second_polls), Poll.status == POLL_NOT_MODIFIED)
        )
    return {
        "entries": entries,
        "seconds": round(seconds, 3),
        "entries_per_second": round(entries / seconds, 1),
        "failed": failed,
        "duplicates_found": duplicates,
        "stages": {stage: per_article(values) for stage, values in samples.items()},
        "peak_rss": {"main_mb": peak_rss_mb()},
        "second_pass": {"seconds": round(second_seconds, 3), "feeds": len(second_polls), "not_modified": not_modified},
    }


def reader_child() -> dict:
    """`reader`'s update of every feed, twice, into its own SQLite file."""
    from reader import make_reader

    urls = json.load(sys.stdin)
    reader = make_reader(os.environ["BENCH_READER_DB"])
    for url in urls:
        reader.add_feed(url)
    started = time.perf_counter()
    reader.update_feeds(workers=4)
    seconds = time.perf_counter() - started
    entries = reader.get_entry_counts().total
    second_started = time.perf_counter()
    reader.update_feeds(workers=4, scheduled=False)  # every feed again, not only those due
    second_seconds = time.perf_counter() - second_started
    second_entries = reader.get_entry_counts().total - entries
    reader.close()
    return {
        "entries": entries,
        "seconds": round(seconds, 3),
        "entries_per_second": round(entries / seconds, 1),
        "peak_rss": {"main_mb": peak_rss_mb()},
        "second_pass": {"seconds": round(second_seconds, 3), "feeds": len(urls), "entries": second_entries},
    }


def child_main(kind: str, profile: Path | None) -> None:
    run = inline_child if kind == "inline" else reader_child
    if profile is None:
        report = run()
    else:
        from pyinstrument import Profiler

        with Profiler() as profiler:
            report = run()
        profile.parent.mkdir(parents=True, exist_ok=True)
        profile.write_text(profiler.output_text(unicode=True, show_all=False))
    json.dump(report, sys.stdout)


# ------------------------------------------------------------------ the report


def ratios(runs: dict[str, dict]) -> dict[str, float]:
    result = {}
    reader = runs.get("reader")
    for name, run in runs.items():
        if reader and name != "reader":
            result[f"{name} / reader"] = round(run["entries_per_second"] / reader["entries_per_second"], 2)
        if name.startswith("inline ") and name[len("inline "):] in runs:
            celery = runs[name[len("inline "):]]
            result[f"{name} / {name[len('inline '):]}"] = round(
                run["entries_per_second"] / celery["entries_per_second"], 2
            )
        if name.endswith(" + webhook") and name[: -len(" + webhook")] in runs:
            plain = runs[name[: -len(" + webhook")]]
            result[f"{name} / {name[: -len(' + webhook')]}"] = round(
                run["entries_per_second"] / plain["entries_per_second"], 2
            )
    return result


def print_report(report: dict) -> None:
    corpus, runs = report["corpus"], report["runs"]
    print(f"{corpus['feeds']} feeds x {corpus['entries_per_feed']} entries = {corpus['entries']} entries "
          f"({corpus['text']} text; {corpus['planted_duplicates']} duplicates and "
          f"{corpus['planted_near_duplicates']} near duplicates planted)")
    print(f"machine: {report['machine']['cores']} cores, {report['machine']['cpu']}, "
          f"{report['machine']['memory_gib']} GiB; load at start {report['machine']['load_average_at_start']}")
    print()
    print(f"{'run':<24}{'entries':>8}{'seconds':>9}{'entries/s':>11}{'dupes':>7}{'2nd pass s':>12}"
          f"{'peak RSS MB':>13}")
    for name, run in runs.items():
        rss = run["peak_rss"]
        memory = f"{rss['main_mb']}" + (f"/{rss['pool_max_mb']}" if "pool_max_mb" in rss else "")
        print(f"{name:<24}{run['entries']:>8}{run['seconds']:>9.2f}{run['entries_per_second']:>11.1f}"
              f"{run.get('duplicates_found', '-'):>7}{run['second_pass']['seconds']:>12.3f}{memory:>13}")
    print()
    for name, value in report["ratios"].items():
        print(f"{name}: {value}x")
    for name, run in runs.items():
        if "webhook_calls_during_first_pass" in run:
            print(f"{name}: {run['webhook_calls_during_first_pass']} webhook calls received during the first pass")
    print()
    print("per stage, ms per article, median / p95:")
    print(f"{'run':<24}" + "".join(f"{stage:>20}" for stage in STAGES))
    for name, run in runs.items():
        if "stages" in run:
            cells = (f"{run['stages'][s]['median_ms']:.3f} / {run['stages'][s]['p95_ms']:.3f}" for s in STAGES)
            print(f"{name:<24}" + "".join(f"{cell:>20}" for cell in cells))
    print("\npeak RSS: main process / largest worker pool process (Celery runs)")


def backend_names(parser: argparse.ArgumentParser, value: str) -> list[str]:
    """The ``--backends`` list, or the parser's usage error for an unknown name."""
    backends = [name for name in value.split(",") if name]
    unknown = set(backends) - {"embedded", "postgres+redis"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    return backends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--entries", type=int, default=50, help="entries per feed")
    parser.add_argument("--corpus", type=Path, help="folder of category/*.txt articles; generated text without")
    parser.add_argument("--backends", default="embedded,postgres+redis", help="comma-separated; '' for none")
    parser.add_argument("--inline", action="store_true", help="also run the stages as plain calls, per backend")
    parser.add_argument("--no-celery", action="store_true", help="skip the Celery runs (with --inline: profiling)")
    parser.add_argument("--webhook", action="store_true",
                        help="also run each backend's Celery pass with one webhook subscription (every article)")
    parser.add_argument("--no-reader", action="store_true", help="skip the reader peer")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2, help="worker processes")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, help="write pyinstrument profiles of the inline runs here")
    parser.add_argument("--workdir", type=Path, help="keep databases and worker logs here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=("inline", "reader"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.profile)
        return
    backends = backend_names(parser, args.backends)
    report: dict[str, object] = {"machine": machine(), "command": " ".join(sys.argv)}
    publisher, urls, report["corpus"] = serve_corpus(args)
    runs: dict[str, dict] = {}
    try:
        with contextlib.ExitStack() as stack:
            workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="feedmill-bench-"))
            for backend in backends:
                home = Path(workdir, backend)
                home.mkdir(parents=True)
                if not args.no_celery:
                    runs[backend] = run_celery(backend, urls, publisher, args, home)
                if not args.no_celery and args.webhook:
                    webhook_home = Path(workdir, f"{backend}-webhook")
                    webhook_home.mkdir(parents=True)
                    receiver = Receiver(status=204)
                    try:
                        runs[f"{backend} + webhook"] = run_celery(backend, urls, publisher, args, webhook_home, receiver)
                    finally:
                        receiver.close()
                if args.inline:
                    inline_home = Path(workdir, f"inline-{backend}")
                    inline_home.mkdir(parents=True)
                    runs[f"inline {backend}"] = run_inline(backend, urls, publisher, inline_home, args.profile)
            if not args.no_reader:
                runs["reader"] = run_reader(urls, publisher, Path(workdir))
    finally:
        publisher.close()
    report["runs"] = runs
    report["ratios"] = ratios(runs)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
