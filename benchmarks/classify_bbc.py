"""The classify stage on the BBC News corpus: the figures in docs/classify.md.

    .venv/bin/python benchmarks/classify_bbc.py --corpus ../shared/data/bbc [--json]

The corpus (2,225 articles in five folders, one per class; research use only)
is read where it lies and never copied. Reported:

(a) the default lexicon's top topic against the BBC class mapped onto the
    IPTC topics (business -> economy_business_finance, ...);
(b) 5-fold cross-validated accuracy of the model ``feedmill classifier train``
    builds, with exact-duplicate texts kept in one fold;
(c) per-article classify time (``classify_article``: language, topics and
    places), median and 95th percentile, with the lexicon and with a model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.classify import classify_article
from tasks.classify_model import (
    Example,
    Report,
    TopicModel,
    cross_validate,
    read_labelled,
    train,
)

BBC_TOPICS = {
    "business": "economy_business_finance",
    "entertainment": "arts_culture_entertainment",
    "politics": "politics",
    "sport": "sport",
    "tech": "science_technology",
}
NO_TOPIC = "(none)"


def subsample(examples: Sequence[Example], per_label: int, seed: int = 0) -> list[Example]:
    """At most ``per_label`` examples of each label, drawn reproducibly."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    rng = random.Random(seed)
    return [e for label in sorted(by_label) for e in rng.sample(by_label[label], min(per_label, len(by_label[label])))]


def lexicon_report(examples: Sequence[Example]) -> Report:
    """The lexicon's top topic (or none) against each article's mapped class."""
    predicted = []
    for e in examples:
        topics = classify_article(e.title, e.text).topics
        predicted.append(topics[0][0] if topics else NO_TOPIC)
    return Report.of([BBC_TOPICS[e.label] for e in examples], predicted)


def classify_times_ms(examples: Sequence[Example], model: TopicModel | None = None) -> dict[str, float]:
    """Median and p95 of one ``classify_article`` call, after a warm-up."""
    classify_article(examples[0].title, examples[0].text, model)
    timings = []
    for e in examples:
        start = time.perf_counter()
        classify_article(e.title, e.text, model)
        timings.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(timings), 3),
            "p95_ms": round(statistics.quantiles(timings, n=20)[-1], 3)}


def run(corpus: Path, folds: int = 5, per_label: int | None = None) -> dict[str, Any]:
    examples = read_labelled(corpus)
    if {e.label for e in examples} != set(BBC_TOPICS):
        raise SystemExit(f"{corpus}: expected the classes {sorted(BBC_TOPICS)}")
    if per_label:
        examples = subsample(examples, per_label)
    lexicon = lexicon_report(examples)
    started = time.perf_counter()
    model_cv = cross_validate(examples, folds)
    cv_seconds = time.perf_counter() - started
    model = train(examples)
    return {
        "corpus": str(corpus),
        "articles": len(examples),
        "lexicon_accuracy": lexicon.accuracy,
        "lexicon_report": lexicon.as_dict(),
        "model_cv_accuracy": model_cv.accuracy,
        "model_cv_folds": folds,
        "model_cv_fold_accuracies": model_cv.fold_accuracies,
        "model_cv_seconds": round(cv_seconds, 1),
        "model_cv_report": model_cv.as_dict(),
        "classify_time_lexicon": classify_times_ms(examples),
        "classify_time_model": classify_times_ms(examples, model),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="the bbc/ folder (LABEL/*.txt)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--per-label", type=int, help="use at most this many articles per class")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args(argv)
    result = run(args.corpus, args.folds, args.per_label)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    lexicon, timing, timing_model = result["lexicon_report"], result["classify_time_lexicon"], result["classify_time_model"]
    print(f"BBC News, {result['articles']} articles, on {result['machine']}")
    print(f"(a) default lexicon, top topic accuracy: {result['lexicon_accuracy']:.4f}")
    print(Report(**lexicon).text())
    print(f"\n(b) trained model, {result['model_cv_folds']}-fold cross-validated accuracy: "
          f"{result['model_cv_accuracy']:.4f} ({result['model_cv_seconds']} s)")
    print(Report(**result["model_cv_report"]).text())
    print(f"\n(c) classify time per article: lexicon median {timing['median_ms']} ms, p95 {timing['p95_ms']} ms; "
          f"with the model median {timing_model['median_ms']} ms, p95 {timing_model['p95_ms']} ms")


if __name__ == "__main__":
    main()
