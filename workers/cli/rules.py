"""``feedmill rules``: add, list and remove the operator's tag/drop/keep rules."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import Rule
from tasks.rules import ACTIONS, DEFAULT_FIELDS, FIELDS, RuleError, check_rule
from tasks.storage import rules as stored_rules
from workers.cli.common import find_feed, iso, migrated_settings

RELABEL_HINT = "apply it to stored articles with: feedmill reprocess --stage classify"


@click.group()
def rules() -> None:
    """Tag, drop or keep articles by keyword or regex (applied in the classify stage)."""


def _feed_id(session: Session, url: str | None) -> int | None:
    return None if url is None else find_feed(session, url).id


@rules.command("add")
@click.argument("action", type=click.Choice(ACTIONS))
@click.option("--keyword", help="Words to find, case-insensitively, as whole words.")
@click.option("--regex", help="A regular expression (Python syntax; (?i) for any case).")
@click.option("--field", "fields", multiple=True, type=click.Choice(FIELDS),
              help=f"Field to search; repeat for several (default: {', '.join(DEFAULT_FIELDS)}).")
@click.option("--tag", help="The tag a 'tag' rule adds.")
@click.option("--feed", "feed_url", help="Only for this feed's articles (default: every feed).")
def rules_add(action: str, keyword: str | None, regex: str | None, fields: tuple[str, ...],
              tag: str | None, feed_url: str | None) -> None:
    """Add a rule: ACTION (tag, drop or keep) when --keyword or --regex matches.

    An article is dropped when a drop rule matches and no keep rule does; a
    dropped article stays stored as a tombstone (never fetched again as new)
    and is left out of exports.
    """
    if (keyword is None) == (regex is None):
        raise click.ClickException("give exactly one of --keyword and --regex")
    kind, pattern = ("keyword", keyword) if keyword is not None else ("regex", regex)
    fields = fields or DEFAULT_FIELDS
    try:
        check_rule(action, kind, pattern, fields, tag)  # type: ignore[arg-type]
    except RuleError as exc:
        raise click.ClickException(str(exc)) from exc
    with session_scope(migrated_settings()) as session:
        rule_id = stored_rules.add_rule(session, _feed_id(session, feed_url), action, tag.strip() if tag else None,
                                        kind, pattern, list(dict.fromkeys(fields)))
    click.echo(f"added rule {rule_id}; new articles get it from the next classify batch; {RELABEL_HINT}")


def _rule_record(rule: Rule, feed_url: str | None) -> dict[str, Any]:
    return {"id": rule.id, "feed_url": feed_url, "action": rule.action, "tag": rule.tag, "kind": rule.kind,
            "pattern": rule.pattern, "fields": rule.fields, "created_at": iso(rule.created_at)}


@rules.command("list")
@click.option("--feed", "feed_url", help="Only the rules that apply to this feed (its own and the global ones).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def rules_list(feed_url: str | None, as_json: bool) -> None:
    """List rules in the order they are applied."""
    with session_scope(migrated_settings()) as session:
        rows = stored_rules.rules_with_feed_urls(session, _feed_id(session, feed_url))
        records = [_rule_record(rule, url) for rule, url in rows]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no rules; add one with: feedmill rules add drop --keyword WORDS")
        return
    for r in records:
        action = f"tag {r['tag']!r}" if r["action"] == "tag" else r["action"]
        click.echo(f"{r['id']:>5}  {action:<12} {r['kind']} {r['pattern']!r} in {','.join(r['fields'])}"
                   f"  ({r['feed_url'] or 'every feed'})")


@rules.command("remove")
@click.argument("rule_ids", nargs=-1, type=int, required=True)
def rules_remove(rule_ids: tuple[int, ...]) -> None:
    """Remove rules by id (articles they dropped stay dropped until reprocessed)."""
    with session_scope(migrated_settings()) as session:
        removed = stored_rules.remove_rules(session, rule_ids)
    missing = sorted(set(rule_ids) - set(removed))
    if missing:
        raise click.ClickException(f"no rule {', '.join(map(str, missing))}; removed {len(removed)}")
    click.echo(f"removed {len(removed)} rule(s); {RELABEL_HINT}")
