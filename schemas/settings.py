"""feedmill's configuration: every setting, its environment variable and default.

One frozen dataclass read from the environment, so a worker, the scheduler
and the command line started with the same environment agree on everything.
With nothing set, feedmill runs embedded: SQLite and a filesystem broker
under ``./var/``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path

MiB = 1024 * 1024
DAY = 86400

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}
#: The retention that keeps everything (``FEEDMILL_RETENTION``, ``feeds set --retention``).
FOREVER = "forever"


def duration_seconds(text: str) -> int:
    """``90d``, ``12h``, ``4w``, ``15m``, ``300`` (seconds): a positive number of seconds."""
    match = _DURATION.match(text.lower())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (use e.g. 12h, 30d, 4w)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def duration_text(seconds: int) -> str:
    """Seconds as ``duration_seconds`` reads them back: ``30d``, ``12h``, ``90s``."""
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNIT_SECONDS[unit] == 0 and unit != "w":
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def retention_seconds(text: str) -> int | None:
    """An age such as ``90d``, or ``forever`` (None: nothing is pruned for age)."""
    return None if text.strip().lower() == FOREVER else duration_seconds(text)


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_duration(name: str, default: str, *, forever: bool = False) -> int | None:
    """A duration variable (``forever`` allowed if asked); a bad value names its variable."""
    value = os.environ.get(name) or default
    try:
        return retention_seconds(value) if forever else duration_seconds(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class Settings:
    """Runtime configuration; ``Settings.from_env()`` is the only constructor used."""

    #: FEEDMILL_HOME: directory for the embedded database and broker.
    home: Path = Path("var")
    #: FEEDMILL_DATABASE_URL: SQLAlchemy URL; default SQLite at $FEEDMILL_HOME/feedmill.db.
    database_url: str = ""
    #: FEEDMILL_BROKER_URL: Celery broker; default the filesystem broker in $FEEDMILL_HOME/broker.
    broker_url: str = ""
    #: FEEDMILL_ALLOW_PRIVATE_NETWORKS: allow fetching loopback/private/link-local addresses.
    allow_private_networks: bool = False
    #: FEEDMILL_MAX_BODY_BYTES: largest feed body accepted, counted after decompression.
    max_body_bytes: int = 15 * MiB
    #: FEEDMILL_FETCH_TIMEOUT: seconds for connect and for each read of a fetch.
    fetch_timeout: float = 20.0
    #: FEEDMILL_FETCH_DEADLINE: seconds a whole fetch may take (slow-drip servers).
    fetch_deadline: float = 60.0
    #: FEEDMILL_MAX_REDIRECTS: redirects followed before a fetch fails.
    max_redirects: int = 5
    #: FEEDMILL_POLL_INTERVAL: seconds between polls while a feed's publishing rate is unknown.
    poll_interval: int = 1800
    #: FEEDMILL_MIN_INTERVAL: shortest adaptive interval between polls of one feed, seconds.
    min_interval: int = 300
    #: FEEDMILL_MAX_INTERVAL: longest adaptive interval, seconds (publisher hints may ask for more).
    max_interval: int = 86400
    #: FEEDMILL_ERROR_BACKOFF_CAP: longest wait after repeated errors, seconds; polling never stops.
    error_backoff_cap: int = 86400
    #: FEEDMILL_SCHEDULE_JITTER: up to this fraction is added to each interval to spread load.
    schedule_jitter: float = 0.1
    #: FEEDMILL_HOST_MAX_CONCURRENT: fetches in flight to one host, across all workers.
    host_max_concurrent: int = 2
    #: FEEDMILL_HOST_MIN_INTERVAL: seconds between the starts of two fetches to one host.
    host_min_interval: float = 1.0
    #: FEEDMILL_REDIRECT_THRESHOLD: polls in a row that must see the same permanent redirect
    #: before the stored feed URL changes.
    redirect_threshold: int = 3
    #: FEEDMILL_WEBSUB_CALLBACK_URL: public base URL of `feedmill web`, for WebSub hubs to call.
    websub_callback_url: str = ""
    #: FEEDMILL_API_TOKEN: when set, every /api route of `feedmill web` wants `Authorization: Bearer <it>`.
    api_token: str = field(default="", repr=False)
    #: FEEDMILL_DISPATCH_EVERY: seconds between the scheduler's looks for due feeds.
    dispatch_every: float = 30.0
    #: FEEDMILL_LEASE_SECONDS: how long a claimed feed stays locked to one fetch.
    lease_seconds: int = 300
    #: FEEDMILL_BATCH_SIZE: most articles one stage task handles.
    batch_size: int = 200
    #: FEEDMILL_DEDUPE_THRESHOLD: share of the shorter text's word 3-shingles found in the longer (containment) from which it is a near duplicate.
    dedupe_threshold: float = 0.5
    #: FEEDMILL_DEDUPE_REISSUE_DAYS: a new entry repeating one of its feed's entries this recent is a reissue.
    dedupe_reissue_days: float = 7.0
    #: FEEDMILL_FULL_TEXT: on | off | auto: fetch entries' linked pages for their full text (feeds set --full-text overrides).
    full_text: str = "auto"
    #: FEEDMILL_FULL_TEXT_MIN_CHARS: in auto mode, an entry with less body text than this gets its page fetched.
    full_text_min_chars: int = 400
    #: FEEDMILL_SWEEP_EVERY: seconds between the sweeper's looks for stuck work.
    sweep_every: float = 300.0
    #: FEEDMILL_STUCK_AFTER: seconds after which pending work with no progress is re-enqueued.
    stuck_after: float = 600.0
    #: FEEDMILL_METRICS_PORT: port on which `feedmill worker` serves Prometheus metrics (0: none).
    metrics_port: int = 0
    #: FEEDMILL_LOG_FORMAT: text | json: how workers and the scheduler write log lines.
    log_format: str = "text"
    #: FEEDMILL_MAX_RETRIES: retries of a task failing transiently before it becomes a dead letter.
    max_retries: int = 8
    #: FEEDMILL_WORKER_MAX_MEMORY_KB: a worker pool process is replaced after a task leaves it
    #: above this resident memory (KiB); 0 for no limit.
    worker_max_memory_kb: int = 0
    #: FEEDMILL_TASK_EVENTS: workers send Celery task events from the start (Flower turns them
    #: on by itself while it runs; this is for other event consumers).
    task_events: bool = False
    #: FEEDMILL_WEBHOOK_TIMEOUT: seconds a webhook receiver has to answer before the attempt fails.
    webhook_timeout: float = 10.0
    #: FEEDMILL_DELIVERY_RETRY_FOR: seconds an event is retried before it becomes a dead letter.
    delivery_retry_for: float = 86400.0
    #: FEEDMILL_DELIVERY_BACKOFF_CAP: longest wait between two attempts of one event, seconds.
    delivery_backoff_cap: float = 3600.0
    #: FEEDMILL_DELIVER_EVERY: seconds between the looks for events due (retries, lost messages).
    deliver_every: float = 5.0
    #: FEEDMILL_FULL_TEXT_EVERY: seconds between the looks for linked pages due (articles that went
    #: on with their summary while their host was busy).
    full_text_every: float = 5.0
    #: FEEDMILL_STREAM_MAXLEN: approximate length a Redis stream subscription is trimmed to.
    stream_maxlen: int = 100_000
    #: FEEDMILL_STREAM_REDIS_URL: the Redis that stream subscriptions write to (default: the broker, if Redis).
    stream_redis_url: str = ""
    #: FEEDMILL_RETENTION: articles older than this are pruned (None: ``forever``, keep all).
    retention: int | None = 90 * DAY
    #: FEEDMILL_RETENTION_KEEP: the newest articles of each feed the standing policy always keeps.
    retention_keep: int = 20
    #: FEEDMILL_TOMBSTONE_GRACE: a pruned item's tombstone goes once its feed has not listed it this long.
    tombstone_grace: int = 30 * DAY
    #: FEEDMILL_PRUNE_EVERY: seconds between the service's prunes.
    prune_every: float = 3600.0
    #: FEEDMILL_POLL_HISTORY: polls (but each feed's latest) and dead letters older than this are purged.
    poll_history: int = 30 * DAY

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("FEEDMILL_HOME") or "var")
        env = os.environ.get
        return cls(
            home=home,
            database_url=env("FEEDMILL_DATABASE_URL") or f"sqlite:///{home / 'feedmill.db'}",
            broker_url=env("FEEDMILL_BROKER_URL") or "filesystem://localhost/",
            allow_private_networks=_env_bool("FEEDMILL_ALLOW_PRIVATE_NETWORKS", False),
            max_body_bytes=int(env("FEEDMILL_MAX_BODY_BYTES") or cls.max_body_bytes),
            fetch_timeout=float(env("FEEDMILL_FETCH_TIMEOUT") or cls.fetch_timeout),
            fetch_deadline=float(env("FEEDMILL_FETCH_DEADLINE") or cls.fetch_deadline),
            max_redirects=int(env("FEEDMILL_MAX_REDIRECTS") or cls.max_redirects),
            poll_interval=int(env("FEEDMILL_POLL_INTERVAL") or cls.poll_interval),
            min_interval=int(env("FEEDMILL_MIN_INTERVAL") or cls.min_interval),
            max_interval=int(env("FEEDMILL_MAX_INTERVAL") or cls.max_interval),
            error_backoff_cap=int(env("FEEDMILL_ERROR_BACKOFF_CAP") or cls.error_backoff_cap),
            schedule_jitter=float(env("FEEDMILL_SCHEDULE_JITTER") or cls.schedule_jitter),
            host_max_concurrent=int(env("FEEDMILL_HOST_MAX_CONCURRENT") or cls.host_max_concurrent),
            host_min_interval=float(env("FEEDMILL_HOST_MIN_INTERVAL") or cls.host_min_interval),
            redirect_threshold=int(env("FEEDMILL_REDIRECT_THRESHOLD") or cls.redirect_threshold),
            websub_callback_url=env("FEEDMILL_WEBSUB_CALLBACK_URL") or cls.websub_callback_url,
            api_token=env("FEEDMILL_API_TOKEN") or cls.api_token,
            dispatch_every=float(env("FEEDMILL_DISPATCH_EVERY") or cls.dispatch_every),
            lease_seconds=int(env("FEEDMILL_LEASE_SECONDS") or cls.lease_seconds),
            batch_size=int(env("FEEDMILL_BATCH_SIZE") or cls.batch_size),
            dedupe_threshold=float(env("FEEDMILL_DEDUPE_THRESHOLD") or cls.dedupe_threshold),
            dedupe_reissue_days=float(env("FEEDMILL_DEDUPE_REISSUE_DAYS") or cls.dedupe_reissue_days),
            full_text=(env("FEEDMILL_FULL_TEXT") or cls.full_text).strip().lower(),
            full_text_min_chars=int(env("FEEDMILL_FULL_TEXT_MIN_CHARS") or cls.full_text_min_chars),
            sweep_every=float(env("FEEDMILL_SWEEP_EVERY") or cls.sweep_every),
            stuck_after=float(env("FEEDMILL_STUCK_AFTER") or cls.stuck_after),
            metrics_port=int(env("FEEDMILL_METRICS_PORT") or cls.metrics_port),
            log_format=(env("FEEDMILL_LOG_FORMAT") or cls.log_format).strip().lower(),
            max_retries=int(env("FEEDMILL_MAX_RETRIES") or cls.max_retries),
            worker_max_memory_kb=int(env("FEEDMILL_WORKER_MAX_MEMORY_KB") or cls.worker_max_memory_kb),
            task_events=_env_bool("FEEDMILL_TASK_EVENTS", cls.task_events),
            webhook_timeout=float(env("FEEDMILL_WEBHOOK_TIMEOUT") or cls.webhook_timeout),
            delivery_retry_for=float(env("FEEDMILL_DELIVERY_RETRY_FOR") or cls.delivery_retry_for),
            delivery_backoff_cap=float(env("FEEDMILL_DELIVERY_BACKOFF_CAP") or cls.delivery_backoff_cap),
            deliver_every=float(env("FEEDMILL_DELIVER_EVERY") or cls.deliver_every),
            full_text_every=float(env("FEEDMILL_FULL_TEXT_EVERY") or cls.full_text_every),
            stream_maxlen=int(env("FEEDMILL_STREAM_MAXLEN") or cls.stream_maxlen),
            stream_redis_url=env("FEEDMILL_STREAM_REDIS_URL") or cls.stream_redis_url,
            retention=_env_duration("FEEDMILL_RETENTION", "90d", forever=True),
            retention_keep=int(env("FEEDMILL_RETENTION_KEEP") or cls.retention_keep),
            tombstone_grace=_env_duration("FEEDMILL_TOMBSTONE_GRACE", "30d"),
            prune_every=float(env("FEEDMILL_PRUNE_EVERY") or cls.prune_every),
            poll_history=_env_duration("FEEDMILL_POLL_HISTORY", "30d"),
        )

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"


def setting_names() -> list[str]:
    """Names of all settings, for the configuration reference and its test."""
    return [f.name for f in fields(Settings)]


@cache
def current_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings.from_env()
