"""``feedmill status`` (one screen on the whole pipeline) and ``feedmill healthcheck``."""

from __future__ import annotations

import json
import sys

import click

from schemas.settings import current_settings
from workers.celery_app import app
from workers.cli.common import iso, migrated_settings
from workers.status import check_broker, check_database, jsonable, pipeline_status


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items())) or "none"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def status(as_json: bool) -> None:
    """Queues, live workers, articles per stage, the last hour, feeds in trouble, the oldest stuck item."""
    s = pipeline_status(migrated_settings(), app)
    if as_json:
        click.echo(json.dumps(jsonable(s), indent=2))
        return
    lines = [f"database {s['database']}; broker {s['broker']}"]
    if s["broker_error"]:
        lines.append(f"broker unreachable: {s['broker_error']}")
    else:
        lines.append("queues: " + ", ".join(f"{queue} {depth}" for queue, depth in s["queues"].items()))
        workers = s["workers"]
        lines.append(f"workers: {len(workers)} answering" + "".join(
            f"\n  {name}: {','.join(queues)}" for name, queues in workers.items()))
    lines.append("articles (stage: status count):")
    for stage, counts in s["articles"].items():
        lines.append(f"  {stage:<9} {_counts(counts)}")
    if not s["articles"]:
        lines.append("  none stored yet")
    hour = s["last_hour"]
    lines.append(f"last hour: polls {_counts(hour['polls'])}; articles {hour['articles_new']} new, "
                 f"{hour['articles_done']} finished; failures {_counts(hour['failures'])}")
    lines.append(f"open failures: {_counts(s['failures_open'])}"
                 + (" (feedmill failures list; feedmill requeue failed)" if s["failures_open"] else ""))
    lines.append(f"feeds: {_counts(s['feeds'])}")
    for feed in s["feeds_in_trouble"]:
        lines.append(f"  {feed['url']}: {feed['consecutive_errors']} error(s) in a row, last {feed['last_error']}; "
                     f"last success {iso(feed['last_success']) or 'never'}; next poll {iso(feed['next_poll_at'])}")
    for child in s["service"]:
        loop = " CRASH LOOP" if child["crash_loop"] else ""
        exited = f", last exit code {child['last_exit_code']} at {iso(child['last_exit_at'])}" if child["last_exit_at"] else ""
        lines.append(f"service {child['host']} pid {child['supervisor_pid']}: {child['name']} "
                     f"{'pid ' + str(child['pid']) if child['pid'] else 'restarting'}, "
                     f"{child['restarts']} restart(s){exited}{loop}")
    for sub in s["subscriptions"]:
        lag = f", oldest pending {_ago(sub['oldest_pending_seconds'])}" if sub["oldest_pending_seconds"] is not None else ""
        lines.append(f"subscription {sub['name']} ({sub['kind']}, {sub['status']}): {sub['delivered']} delivered, "
                     f"{sub['pending']} pending, {sub['retrying']} retrying, {sub['dead']} dead{lag}")
    if s["pages_due"]:
        lines.append(f"full text: {s['pages_due']} article(s) went on with their summary, their page due "
                     "(fetched in its host's turn)")
    stuck = s["oldest_stuck"]
    if stuck is None:
        lines.append("oldest unfinished: nothing waiting")
    else:
        late = " (stuck: older than FEEDMILL_STUCK_AFTER; the sweeper re-sends it)" if stuck["age_seconds"] > s["stuck_after"] else ""
        lines.append(f"oldest unfinished: {stuck['kind']} {stuck['id']} waiting for {stuck['stage']} "
                     f"for {_ago(stuck['age_seconds'])}{late}")
    click.echo("\n".join(lines))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def healthcheck(as_json: bool) -> None:
    """Exit 0 when the database and the broker answer, 1 (one line for each that does not) otherwise."""
    settings = current_settings()
    checks = [check_database(settings), check_broker(settings)]
    healthy = all(check.ok for check in checks)
    if as_json:
        click.echo(json.dumps({"ok": healthy, **{check.name: check.as_dict() for check in checks}}, indent=2))
    else:
        for check in checks:
            line = f"{check.name} ok: {check.url}" if check.ok else f"{check.name} unreachable: {check.url}: {check.error}"
            click.echo(line, err=not check.ok)
    if not healthy:
        sys.exit(1)
