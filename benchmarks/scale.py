"""Scale: per-article cost and worker memory as the store grows, through real Celery workers.

    .venv/bin/python benchmarks/scale.py [--feeds 2000] [--entries 50] [--rounds 10]
        [--corpus ../shared/data/bbc] [--backends postgres+redis,embedded] [--concurrency 2]
        [--warmup 8] [--keep-recycling] [--no-analyze] [--workdir DIR] [--json]

The feeds (``corpus.py``, served by ``publisher.py``, as ``pipeline.py`` does)
are split into rounds. One ``feedmill worker`` runs for the whole measurement;
after a warm-up round (``--warmup`` feeds, outside the checkpoints), each
round pauses the previous round's feeds, adds its own, and runs ``feedmill
run --once --no-workers``, so a round fetches and stores only its new entries
into a store that grows by one round each time. After each round (a checkpoint:
10k, 20k, ... stored at full size) it records the round's entries/s, the
per-stage milliseconds per article from the round's part of the worker log,
the RSS (and USS) of the Celery main process and of each pool process, the
size of the database and the load average. The ratios compare the last
checkpoint with the first.

Celery replaces a pool process after ``worker_max_tasks_per_child`` tasks (1000
in feedmill) and, if ``FEEDMILL_WORKER_MAX_MEMORY_KB`` is set, once it grows
past that: either would hide growth, so both are turned off for the measurement
(``CELERY_WORKER_MAX_TASKS_PER_CHILD``, read by ``celery worker``) unless
``--keep-recycling``; a change of pool process ids between checkpoints is reported.

PostgreSQL relies on autovacuum for two things the store needs as it grows:
statistics, from which it plans dedupe's lookups, and the reuse of the space of
the row versions every stage's UPDATE leaves behind. On a server with
``autovacuum = off`` (this project's test machines) the tables are never
analyzed, the planner guesses that a lookup of 50 hashes matches a third of
``articles`` and scans the whole table, and ``articles`` swells with dead rows:
the cost per article grows with the store. Such a server is not a production
one, so there the script runs ``VACUUM ANALYZE`` after each checkpoint, outside
the measured time, as autovacuum would (it vacuums a table once a fifth of its
rows are dead and analyzes it once a tenth has changed; each round changes at
least that); ``--no-analyze`` measures the server as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
from pipeline import (
    STAGES,
    MemorySampler,
    MiB,
    backend_names,
    backend_store,
    feedmill,
    feedmill_env,
    machine,
    run_once,
    serve_corpus,
    stages_from_log,
    start_worker,
    stop,
)

#: Tasks before Celery replaces a pool process, "off": more than any run here sends.
NO_RECYCLING = str(10**9)


def store_mb(database_url: str) -> float:
    """The database's size on disk: PostgreSQL's ``pg_database_size``, or the SQLite file and its WAL."""
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    else:
        import psycopg

        with psycopg.connect(database_url) as connection:
            size = connection.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return round(size / MiB, 1)


def memory_now(worker_pid: int) -> dict[str, object]:
    """RSS and USS (pages no other process shares) of the Celery main process and each pool process."""
    main = psutil.Process(worker_pid)
    children = main.children(recursive=True)
    pool = [child.memory_full_info() for child in children]
    main_info = main.memory_full_info()
    return {
        "main_rss_mb": round(main_info.rss / MiB, 1),
        "main_uss_mb": round(main_info.uss / MiB, 1),
        "pool_rss_mb": [round(info.rss / MiB, 1) for info in pool],
        "pool_uss_mb": [round(info.uss / MiB, 1) for info in pool],
        "pool_pids": [child.pid for child in children],
    }


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User and system CPU seconds of each process still alive."""
    result = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            result[pid] = times.user + times.system
    return result


def database_pids(database_url: str) -> list[int]:
    """PostgreSQL's server processes serving this database (the workers' pooled connections)."""
    if database_url.startswith("sqlite"):
        return []  # SQLite works inside the worker processes
    import psycopg

    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [pid for (pid,) in rows]


def blocks_read(database_url: str) -> dict[str, int]:
    """Per table, PostgreSQL's blocks read from outside shared_buffers so far (heap, indexes, TOAST),
    and ``(autovacuum)``, the autovacuum and autoanalyze passes (whose reads count too): counts, not
    times, so a table whose working set outgrows the cache shows on a busy machine too."""
    if database_url.startswith("sqlite"):
        return {}
    import psycopg

    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT relname, coalesce(heap_blks_read, 0) + coalesce(idx_blks_read, 0)"
            " + coalesce(toast_blks_read, 0) + coalesce(tidx_blks_read, 0) FROM pg_statio_user_tables"
        ).fetchall()
        passes = connection.execute(
            "SELECT sum(autovacuum_count + autoanalyze_count) FROM pg_stat_user_tables"
        ).fetchone()[0]
    return {**dict(rows), "(autovacuum)": int(passes or 0)}


def autovacuum_is_on(database_url: str) -> bool:
    if database_url.startswith("sqlite"):
        return True  # SQLite plans without gathered statistics
    import psycopg

    with psycopg.connect(database_url) as connection:
        return connection.execute("SHOW autovacuum").fetchone()[0] == "on"


def vacuum_analyze(database_url: str) -> float:
    """VACUUM ANALYZE the whole database, as autovacuum would; seconds taken."""
    import psycopg

    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")
    return round(time.monotonic() - started, 2)


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two samples by the processes in both."""
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


def measure_round(
    env: dict[str, str], worker_pid: int, log_path: Path, urls: list[str], previous: list[str]
) -> dict:
    """One round: pause the previous round's feeds, add this round's, run them once; then the checkpoint.

    Besides wall time it counts the CPU time of the worker's processes and of PostgreSQL's server
    processes for the worker's connections: on a machine shared with other work, CPU per article
    is far less moved by the load than entries/s."""
    if previous:
        feedmill(env, "feeds", "pause", *previous)
    feedmill(env, "feeds", "add", *urls)
    log_offset = log_path.stat().st_size
    workers = [worker_pid, *(child.pid for child in psutil.Process(worker_pid).children(recursive=True))]
    database = database_pids(env["FEEDMILL_DATABASE_URL"])
    cpu_before = cpu_seconds(workers), cpu_seconds(database)
    blocks_before = blocks_read(env["FEEDMILL_DATABASE_URL"])
    sampler = MemorySampler(worker_pid)
    summary = run_once(env)
    time.sleep(1.0)  # the last task's "succeeded" line follows its commit, which run --once waits for
    sampler.stop()
    worker_cpu = cpu_used(cpu_before[0], cpu_seconds(workers))
    database_cpu = cpu_used(cpu_before[1], cpu_seconds(database))
    blocks = {table: count - blocks_before.get(table, 0)
              for table, count in blocks_read(env["FEEDMILL_DATABASE_URL"]).items()}
    with open(log_path, "rb") as log:
        log.seek(log_offset)
        round_log = log.read().decode(errors="replace")
    entries = summary["articles_new"]
    per_entry = 1000 / entries if entries else 0.0
    return {
        "feeds": summary["feeds_polled"],
        "entries": entries,
        "seconds": summary["seconds"],
        "entries_per_second": round(entries / summary["seconds"], 1),
        "ms_per_article": round(summary["seconds"] * per_entry, 3),
        "worker_cpu_ms_per_article": round(worker_cpu * per_entry, 3),
        "database_cpu_ms_per_article": round(database_cpu * per_entry, 3),
        "database_processes": len(database),
        "database_blocks_read_per_article": {
            table: round(count * per_entry / 1000, 2)
            for table, count in sorted(blocks.items()) if count and table != "(autovacuum)"
        },
        "database_autovacuum_passes": blocks.get("(autovacuum)", 0),
        "failed": summary["articles_failed"],
        "feed_errors": summary["feed_errors"],
        "duplicates_found": summary["duplicates"],
        "stages": stages_from_log(round_log, entries),
        "memory": {
            **memory_now(worker_pid),
            "peak_main_rss_mb": round(sampler.peaks.get(worker_pid, 0) / MiB, 1),
            "peak_pool_rss_mb": round(max((v for k, v in sampler.peaks.items() if k != worker_pid), default=0) / MiB, 1),
        },
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def run_backend(backend: str, urls: list[str], args: argparse.Namespace, home: Path) -> dict:
    """One worker for the whole run: a warm-up round over the first ``args.warmup`` feeds (so
    each pool process's one-time loads, such as the language model, fall outside the checkpoints),
    then ``args.rounds`` rounds of an equal share of the rest."""
    warmup, urls = urls[: args.warmup], urls[args.warmup :]
    per_round = len(urls) // args.rounds
    checkpoints = []
    with backend_store(backend, home) as (database_url, broker_url):
        env = feedmill_env(home, database_url, broker_url)
        if not args.keep_recycling:
            env |= {"CELERY_WORKER_MAX_TASKS_PER_CHILD": NO_RECYCLING, "FEEDMILL_WORKER_MAX_MEMORY_KB": "0"}
        stand_in_for_autovacuum = args.analyze and not autovacuum_is_on(database_url)
        log_path = home / "worker.log"
        worker, startup = start_worker(env, args.concurrency, log_path)
        try:
            warm = measure_round(env, worker.pid, log_path, warmup, []) if warmup else None
            stored = warm["entries"] if warm else 0
            previous_pids = sorted(warm["memory"]["pool_pids"]) if warm else None
            for number in range(args.rounds):
                round_urls = urls[number * per_round : (number + 1) * per_round]
                previous = urls[(number - 1) * per_round : number * per_round] if number else warmup
                checkpoint = measure_round(env, worker.pid, log_path, round_urls, previous)
                stored += checkpoint["entries"]
                pids = sorted(checkpoint["memory"]["pool_pids"])
                checkpoint = {"round": number + 1, "stored": stored, "store_mb": store_mb(database_url),
                              "pool_replaced": previous_pids is not None and pids != previous_pids, **checkpoint}
                previous_pids = pids
                if stand_in_for_autovacuum:
                    checkpoint["vacuum_analyze_seconds"] = vacuum_analyze(database_url)
                checkpoints.append(checkpoint)
                print(f"{backend}: round {number + 1}/{args.rounds}, {stored} stored, "
                      f"{checkpoint['entries_per_second']} entries/s, load {checkpoint['load_average']}",
                      file=sys.stderr)
        finally:
            stop(worker)
    return {
        "worker_start_seconds": round(startup, 2),
        "concurrency": args.concurrency,
        "recycling": "feedmill's settings" if args.keep_recycling else "off (max tasks per child, max memory)",
        "maintenance": ("VACUUM ANALYZE after each checkpoint (the server's autovacuum is off)" if stand_in_for_autovacuum
                       else "the server's own (autovacuum on, or --no-analyze)"),
        "warmup": warm,
        "checkpoints": checkpoints,
        "ratios": ratios(checkpoints[0], checkpoints[-1]),
    }


def ratios(first: dict, last: dict) -> dict[str, float | None]:
    """Last checkpoint over first: cost per article (whole, and each stage's median) and memory."""

    def ratio(new: float, old: float) -> float | None:
        return round(new / old, 3) if old else None

    result = {name: ratio(last[name], first[name])
              for name in ("ms_per_article", "worker_cpu_ms_per_article", "database_cpu_ms_per_article")}
    for stage in STAGES:
        result[f"{stage}_median_ms"] = ratio(last["stages"][stage]["median_ms"], first["stages"][stage]["median_ms"])
    result["stages_median_sum_ms"] = ratio(
        sum(last["stages"][s]["median_ms"] for s in STAGES), sum(first["stages"][s]["median_ms"] for s in STAGES)
    )
    old, new = first["memory"], last["memory"]
    result["main_rss"] = ratio(new["main_rss_mb"], old["main_rss_mb"])
    result["pool_rss_max"] = ratio(max(new["pool_rss_mb"], default=0), max(old["pool_rss_mb"], default=0))
    result["pool_uss_max"] = ratio(max(new["pool_uss_mb"], default=0), max(old["pool_uss_mb"], default=0))
    return result


def print_report(report: dict) -> None:
    corpus = report["corpus"]
    print(f"{corpus['feeds']} feeds x {corpus['entries_per_feed']} entries = {corpus['entries']} entries "
          f"({corpus['text']} text): {report['warmup']} feeds to warm up, then {report['rounds']} rounds; "
          f"machine: {report['machine']['cores']} cores, load at start {report['machine']['load_average_at_start']}")
    for backend, run in report["runs"].items():
        print(f"\n{backend} ({run['concurrency']} pool processes, recycling {run['recycling']}; "
              f"maintenance: {run['maintenance']}); "
              "ms per article: wall, CPU of workers/database, each stage's median task; "
              "PostgreSQL blocks read per article; RSS/USS MB after the round")
        print(f"{'stored':>7}{'ent/s':>7}{'ms/art':>8}{'cpu w/db':>11}" + "".join(f"{s:>9}" for s in STAGES)
              + f"{'DB blk/art':>11}{'main RSS':>9}{'pool RSS':>14}{'pool USS':>14}{'DB MB':>8}{'load 1/5':>11}")
        for c in run["checkpoints"]:
            memory = c["memory"]
            cpu = f"{c['worker_cpu_ms_per_article']:.2f}/{c['database_cpu_ms_per_article']:.2f}"
            print(f"{c['stored']:>7}{c['entries_per_second']:>7.0f}{c['ms_per_article']:>8.2f}{cpu:>11}"
                  + "".join(f"{c['stages'][s]['median_ms']:>9.3f}" for s in STAGES)
                  + f"{sum(c['database_blocks_read_per_article'].values()):>11.1f}{memory['main_rss_mb']:>9.0f}{'/'.join(f'{v:.0f}' for v in memory['pool_rss_mb']):>14}"
                  + f"{'/'.join(f'{v:.0f}' for v in memory['pool_uss_mb']):>14}{c['store_mb']:>8.0f}"
                  + f"{c['load_average'][0]:>6.1f}/{c['load_average'][1]:<4.1f}"
                  + (" pool replaced" if c["pool_replaced"] else ""))
        print("last / first: " + ", ".join(f"{name} {value}" for name, value in run["ratios"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feeds", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=50, help="entries per feed")
    parser.add_argument("--rounds", type=int, default=10, help="checkpoints; each round adds feeds/rounds feeds")
    parser.add_argument("--corpus", type=Path, help="folder of category/*.txt articles; generated text without")
    parser.add_argument("--backends", default="postgres+redis", help="comma-separated: postgres+redis, embedded")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2, help="worker pool processes")
    parser.add_argument("--warmup", type=int, default=8, help="feeds of a first round left out of the checkpoints")
    parser.add_argument("--keep-recycling", action="store_true", help="leave Celery's pool process recycling on")
    parser.add_argument("--no-analyze", dest="analyze", action="store_false",
                        help="on a PostgreSQL server with autovacuum off, do not VACUUM ANALYZE after each checkpoint")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="keep databases and worker logs here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    backends = backend_names(parser, args.backends)
    if not 1 <= args.rounds <= args.feeds or args.feeds % args.rounds:
        parser.error("--rounds must divide --feeds")
    report: dict[str, object] = {"machine": machine(), "command": " ".join(sys.argv), "rounds": args.rounds,
                               "warmup": args.warmup}
    with_warmup = argparse.Namespace(**{**vars(args), "feeds": args.feeds + args.warmup})
    publisher, urls, report["corpus"] = serve_corpus(with_warmup)
    runs: dict[str, dict] = {}
    try:
        with contextlib.ExitStack() as stack:
            workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="feedmill-scale-"))
            for backend in backends:
                home = Path(workdir, backend)
                home.mkdir(parents=True)
                runs[backend] = run_backend(backend, urls, args, home)
    finally:
        publisher.close()
    report["runs"] = runs
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
