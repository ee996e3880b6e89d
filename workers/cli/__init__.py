"""The ``feedmill`` command line: a contract scripts rely on.

Errors are one line on stderr (exit 1); ``--json`` output is for scripts;
long work shows progress on a terminal. Set FEEDMILL_DEBUG=1 for tracebacks.
Each command group lives in its own module and is registered here.
"""

from __future__ import annotations

import os
import sys

import click

from workers.cli import (
    classifier,
    clusters,
    export,
    failures,
    feeds,
    processes,
    prune,
    reprocess,
    requeue,
    rules,
    status,
    subscriptions,
)


@click.group()
def cli() -> None:
    """feedmill: poll feeds; fetch, parse, clean, dedupe, classify and store their articles."""


cli.add_command(feeds.feeds)
cli.add_command(processes.migrate_command)
cli.add_command(processes.worker)
cli.add_command(processes.scheduler)
cli.add_command(processes.run)
cli.add_command(processes.web)
cli.add_command(export.export)
cli.add_command(classifier.classifier)
cli.add_command(classifier.explain)
cli.add_command(rules.rules)
cli.add_command(reprocess.reprocess)
cli.add_command(clusters.clusters)
cli.add_command(failures.failures)
cli.add_command(prune.prune)
cli.add_command(requeue.requeue)
cli.add_command(status.status)
cli.add_command(status.healthcheck)
cli.add_command(subscriptions.subscriptions)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("feedmill: aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"feedmill: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # one clear line for people; the traceback on request
        if os.environ.get("FEEDMILL_DEBUG"):
            raise
        click.echo(f"feedmill: error: {type(exc).__name__}: {exc}".splitlines()[0], err=True)
        sys.exit(1)
