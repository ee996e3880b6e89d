"""``feedmill classifier``: train, evaluate and choose topic models; ``feedmill explain``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from schemas.db import session_scope
from tasks.classify_model import (
    Example,
    LabelledDataError,
    Report,
    TopicModel,
    active_model,
    cross_validate,
    evaluate,
    read_labelled,
    save_model,
    split_holdout,
    stored_model,
    train,
)
from tasks.storage import articles, classifier_models
from workers.cli.common import iso, migrated_settings

RELABEL_HINT = "relabel stored articles with: feedmill reprocess --stage classify"
#: Terms per topic in explain's text output (--json has them all).
EXPLAIN_TERMS_SHOWN = 10


@click.group()
def classifier() -> None:
    """Train, evaluate and choose the topic model (default: the built-in lexicon)."""


def _examples(path: str) -> list[Example]:
    try:
        examples = read_labelled(Path(path))
    except LabelledDataError as exc:
        raise click.ClickException(str(exc)) from exc
    labels = sorted({e.label for e in examples})
    click.echo(f"read {len(examples)} example(s) of {len(labels)} label(s) from {path}: {', '.join(labels)}", err=True)
    return examples


def _print_report(title: str, report: Report) -> None:
    click.echo(title)
    click.echo(report.text())


@classifier.command("train")
@click.argument("labelled", type=click.Path(exists=True))
@click.option("--holdout", default=0.2, show_default=True, help="Fraction held out to evaluate on (0: none).")
@click.option("--activate/--no-activate", default=True, show_default=True, help="Make it the model workers use.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train_command(labelled: str, holdout: float, activate: bool, as_json: bool) -> None:
    """Train a model on LABELLED (CSV with text,label[,title] or a DIR of LABEL/*.txt) and store it.

    With --holdout, a model trained on the rest is first evaluated on the held-out
    part; the stored model is then trained on every example.
    """
    settings = migrated_settings()
    examples = _examples(labelled)
    report = None
    try:
        if holdout:
            rest, held_out = split_holdout(examples, holdout)
            click.echo(f"training on {len(rest)}, evaluating on {len(held_out)} held out...", err=True)
            report = evaluate(train(rest), held_out)
    except LabelledDataError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"training on all {len(examples)} example(s)...", err=True)
    model = train(examples)
    metrics = {"examples": len(examples), "holdout": holdout, "report": report.as_dict() if report else None}
    with session_scope(settings) as session:
        version = save_model(session, model, settings.home, str(Path(labelled).resolve()), metrics, activate)
        path = classifier_models.model_path(session, version)
    if as_json:
        click.echo(json.dumps({"version": version, "path": path, "active": activate, "labels": list(model.labels),
                               "examples": len(examples), "report": metrics["report"]}, indent=2))
        return
    if report:
        _print_report(f"held-out evaluation ({holdout:.0%} of the examples):", report)
        click.echo("")
    state = "active: workers use it from their next batch; " + RELABEL_HINT if activate else (
        f"not active; activate it with: feedmill classifier activate {version}"
    )
    click.echo(f"saved model version {version} to {path}\n{state}")


def _model_for_evaluation(session: Any, model: str | None) -> TopicModel:
    if model is None:
        active = active_model(session)
        if active is None:
            raise click.ClickException("no active model; give --model VERSION|FILE or --folds K")
        return active
    if Path(model).is_file():
        try:
            return TopicModel.load(Path(model))
        except Exception as exc:
            raise click.ClickException(f"{model}: cannot load a model from it ({exc})") from exc
    if not model.isdigit():
        raise click.ClickException(f"--model takes a version number or a model file, not {model!r}")
    try:
        return stored_model(session, int(model))
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc


@classifier.command("evaluate")
@click.argument("labelled", type=click.Path(exists=True))
@click.option("--model", help="Version or model file to evaluate (default: the active model).")
@click.option("--folds", type=int, help="Instead: K-fold cross-validation of a fresh model on LABELLED.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def evaluate_command(labelled: str, model: str | None, folds: int | None, as_json: bool) -> None:
    """Accuracy, per-label precision/recall and a confusion matrix on LABELLED, held-out data.

    Either a stored model is scored on LABELLED (data it was not trained on), or,
    with --folds, fresh models are cross-validated on it (exact-duplicate texts
    kept in one fold).
    """
    settings = migrated_settings()
    examples = _examples(labelled)
    if folds is not None:
        if model is not None:
            raise click.ClickException("give --model or --folds, not both")
        with click.progressbar(length=folds, label="cross-validating", file=sys.stderr,
                               hidden=not sys.stderr.isatty()) as bar:
            try:
                report = cross_validate(examples, folds, on_fold=lambda _fold: bar.update(1))
            except LabelledDataError as exc:
                raise click.ClickException(str(exc)) from exc
        title = f"{folds}-fold cross-validation:"
    else:
        with session_scope(settings) as session:
            chosen = _model_for_evaluation(session, model)
        report = evaluate(chosen, examples)
        title = f"model version {chosen.version}:" if chosen.version else f"model file {model}:"
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(title, report)


@classifier.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def list_command(as_json: bool) -> None:
    """List stored model versions; the active one is marked."""
    with session_scope(migrated_settings()) as session:
        rows = classifier_models.list_models(session)
    records = [
        {"version": r.id, "created_at": iso(r.created_at), "active": r.active, "labels": r.labels,
         "source": r.source, "path": r.path, "examples": (r.metrics or {}).get("examples"),
         "holdout_accuracy": ((r.metrics or {}).get("report") or {}).get("accuracy")}
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not any(r["active"] for r in records):
        click.echo("active: the default lexicon (17 IPTC topics)")
    for r in records:
        accuracy = f"held-out accuracy {r['holdout_accuracy']:.4f}" if r["holdout_accuracy"] is not None else "not evaluated"
        click.echo(f"{'*' if r['active'] else ' '} v{r['version']:<4} {r['created_at']}  {r['examples']} examples, "
                   f"{accuracy}; labels: {', '.join(r['labels'])}\n        from {r['source']}")


@classifier.command("activate")
@click.argument("version", type=int)
def activate_command(version: int) -> None:
    """Make VERSION the model workers use for topics, from their next batch on."""
    with session_scope(migrated_settings()) as session:
        try:
            classifier_models.set_active(session, version)
        except LookupError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"model version {version} is active; {RELABEL_HINT}")


@classifier.command("deactivate")
def deactivate_command() -> None:
    """Go back to the default lexicon for topics."""
    with session_scope(migrated_settings()) as session:
        classifier_models.set_active(session, None)
    click.echo(f"no model is active: topics come from the default lexicon; {RELABEL_HINT}")


@click.command("explain")
@click.argument("article_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def explain(article_id: int, as_json: bool) -> None:
    """Why ARTICLE_ID gets its topics, places, language, tags and drop: terms, scores, rules."""
    with session_scope(migrated_settings()) as session:
        row = articles.article_with_feed_url(session, article_id)
        if row is None:
            raise click.ClickException(f"no article {article_id}")
        article, feed_url = row
        if article.text is None and article.title is None:
            raise click.ClickException(f"article {article_id} is not cleaned yet (stage {article.stage})")
        from tasks.classify import explain_article, load_setup  # the language model and automatons: only here

        explained = explain_article(load_setup(session), article)
    stored = {
        "language": article.language,
        "topics": [label for label, _score in (article.topics or [])],
        "places": article.places or [],
        "tags": article.tags or [],
        "dropped_by": article.dropped_by,
        "classifier_version": article.classifier_version,
    }
    current = {
        "language": explained["language"],
        "topics": [t["topic"] for t in explained["topics"] if t["kept"]],
        "places": [p["code"] for p in explained["places"]],
        "tags": explained["tags"],
        "dropped_by": explained["dropped_by"],
        "classifier_version": explained["classifier"]["version"],
    }
    record = {"id": article.id, "title": article.title, "feed_url": feed_url, "stage": article.stage,
              "status": article.status, **explained, "stored": stored, "stored_is_current": stored == current}
    if as_json:
        click.echo(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        _print_explanation(record)


def _print_explanation(r: dict[str, Any]) -> None:
    classifier = r["classifier"]
    source = (f"trained model v{classifier['version']} (labels: {', '.join(classifier['labels'])})"
              if classifier["kind"] == "model" else "default lexicon (17 IPTC topics)")
    lines = [f"article {r['id']} ({r['stage']}/{r['status']}): {r['title']}", f"feed: {r['feed_url']}",
             f"topics from: {source}", f"language: {r['language'] or 'unknown'}",
             "topics (* = given to the article; score, then the terms behind it):"]
    for t in r["topics"]:
        terms = ", ".join(f"{term} {weight:g}" for term, weight in t["terms"][:EXPLAIN_TERMS_SHOWN]) or "-"
        if len(t["terms"]) > EXPLAIN_TERMS_SHOWN:
            terms += f" (+{len(t['terms']) - EXPLAIN_TERMS_SHOWN} more in --json)"
        lines.append(f" {'*' if t['kept'] else ' '} {t['topic']:<28} {t['score']:.4f}  {terms}")
    if not r["topics"]:
        lines.append("   none: no topic term matched")
    lines.append("places (names that counted):")
    lines += [f"   {p['code']}  " + ", ".join(f"{name} x{n}" for name, n in p["names"].items()) for p in r["places"]]
    if not r["places"]:
        lines.append("   none")
    lines.append("rules matched:")
    lines += [f"   rule {m['id']} ({'global' if m['global'] else 'this feed'}): {m['rule']}" for m in r["rules"]]
    if not r["rules"]:
        lines.append("   none")
    lines.append(f"tags: {', '.join(r['tags']) or '-'}")
    lines.append(f"dropped: by rule {r['dropped_by']}" if r["dropped_by"] else "dropped: no")
    stored = r["stored"]
    lines.append(f"stored: topics {', '.join(stored['topics']) or '-'}; places {', '.join(stored['places']) or '-'}; "
                 f"language {stored['language'] or '-'}; "
                 + (f"by model v{stored['classifier_version']}" if stored["classifier_version"] else "by the lexicon"))
    if not r["stored_is_current"] and r["stage"] == "done":
        lines.append("the stored labels differ from the current classifier's and rules'; relabel with: "
                     f"feedmill reprocess --stage classify --feed {r['feed_url']}")
    click.echo("\n".join(lines))
