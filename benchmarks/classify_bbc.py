"""The classify stage on the BBC News corpus: the figures in docs/classification.md.

    .venv/bin/python benchmarks/classify_bbc.py --corpus ../shared/data/bbc [--json]

The corpus (2,225 articles in five folders, one per class; research use only)
is read where it lies and never copied. Reported:

(a) the default lexicon's top topic against the BBC class mapped onto the
    IPTC topics (business -> economy_business_finance, ...), and how many
    articles got no topic; also on each article cut to its title and first
    sentence, a stand-in for the summary-only feeds most articles come from;
    and how often the top topic is right for each band of its score (the
    confidence export and the API give);
(b) 5-fold cross-validated accuracy of the model ``feedmill classifier train``
    builds, with exact-duplicate texts kept in one fold;
(c) per-article classify time (``classify_article``: language, topics and
    places), median and 95th percentile, with the lexicon and with a model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


#: Where a sentence ends: a stop, then space, then what starts a sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'\u2018\u201c(]?[A-Z0-9])")
#: Bands of the top topic's score for the calibration table.
CONFIDENCE_BANDS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


#: Words whose stop ends no sentence ("Mr. Blair", "the U.S. Senate").
_ABBREVIATIONS = frozenset("mr mrs ms dr prof st mt gen sen rep gov lt col sgt capt jr sr no vs inc corp co ltd u.s u.k".split())


def title_and_first_sentence(example: Example) -> Example:
    """The article as a summary-only feed would give it: its title and the first sentence of its text."""
    text = example.text.strip()
    for end in _SENTENCE_END.finditer(text):
        last_word = text[:end.start()].rsplit(None, 1)[-1].rstrip(".!?").lower()
        if last_word not in _ABBREVIATIONS:
            text = text[:end.start()]
            break
    return Example(example.title, text, example.label)


def lexicon_predictions(examples: Sequence[Example]) -> list[tuple[str, float | None]]:
    """The lexicon's top topic and its score for each example ((none), None without a topic)."""
    predicted = []
    for e in examples:
        topics = classify_article(e.title, e.text).topics
        predicted.append(topics[0] if topics else (NO_TOPIC, None))
    return predicted


def lexicon_report(examples: Sequence[Example], predicted: Sequence[tuple[str, float | None]] | None = None) -> Report:
    """The lexicon's top topic (or none) against each article's mapped class."""
    predicted = predicted if predicted is not None else lexicon_predictions(examples)
    return Report.of([BBC_TOPICS[e.label] for e in examples], [topic for topic, _ in predicted])


def no_topic_share(predicted: Sequence[tuple[str, float | None]]) -> float:
    return round(sum(topic == NO_TOPIC for topic, _ in predicted) / len(predicted), 4)


def calibration(right: Sequence[bool], scores: Sequence[float | None]) -> list[dict[str, Any]]:
    """Per band of the top topic's score: how many articles, and the share whose top topic is right."""
    bands = []
    for low, high in zip(CONFIDENCE_BANDS, CONFIDENCE_BANDS[1:], strict=False):
        inside = [ok for ok, score in zip(right, scores, strict=True)
                  if score is not None and low <= score < high + (high == 1.0)]
        if inside:
            bands.append({"from": low, "to": high, "articles": len(inside),
                          "accuracy": round(sum(inside) / len(inside), 4)})
    return bands


def lexicon_figures(examples: Sequence[Example]) -> dict[str, Any]:
    """Accuracy, the share without a topic, the report and the calibration table of the lexicon."""
    predicted = lexicon_predictions(examples)
    report = lexicon_report(examples, predicted)
    right = [topic == BBC_TOPICS[e.label] for e, (topic, _) in zip(examples, predicted, strict=True)]
    return {"accuracy": report.accuracy, "no_topic": no_topic_share(predicted), "report": report.as_dict(),
            "calibration": calibration(right, [score for _, score in predicted])}


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
    lexicon = lexicon_figures(examples)
    short_examples = [title_and_first_sentence(e) for e in examples]
    short = lexicon_figures(short_examples)
    started = time.perf_counter()
    model_cv = cross_validate(examples, folds)
    cv_seconds = time.perf_counter() - started
    model = train(examples)
    return {
        "corpus": str(corpus),
        "articles": len(examples),
        "lexicon_accuracy": lexicon["accuracy"],
        "lexicon_no_topic": lexicon["no_topic"],
        "lexicon_report": lexicon["report"],
        "lexicon_calibration": lexicon["calibration"],
        "short_lexicon_accuracy": short["accuracy"],
        "short_lexicon_no_topic": short["no_topic"],
        "short_lexicon_report": short["report"],
        "short_lexicon_calibration": short["calibration"],
        "model_cv_accuracy": model_cv.accuracy,
        "model_cv_folds": folds,
        "model_cv_fold_accuracies": model_cv.fold_accuracies,
        "model_cv_seconds": round(cv_seconds, 1),
        "model_cv_report": model_cv.as_dict(),
        "classify_time_lexicon": classify_times_ms(examples),
        "classify_time_lexicon_short": classify_times_ms(short_examples),
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
    print(f"(a) default lexicon, top topic accuracy: {result['lexicon_accuracy']:.4f}, "
          f"no topic: {result['lexicon_no_topic']:.2%}")
    print(Report(**lexicon).text())
    print(calibration_text(result["lexicon_calibration"]))
    print(f"\n(a') the same on each article's title and first sentence: {result['short_lexicon_accuracy']:.4f}, "
          f"no topic: {result['short_lexicon_no_topic']:.2%}")
    print(Report(**result["short_lexicon_report"]).text())
    print(calibration_text(result["short_lexicon_calibration"]))
    print(f"\n(b) trained model, {result['model_cv_folds']}-fold cross-validated accuracy: "
          f"{result['model_cv_accuracy']:.4f} ({result['model_cv_seconds']} s)")
    print(Report(**result["model_cv_report"]).text())
    short_timing = result["classify_time_lexicon_short"]
    print(f"\n(c) classify time per article: lexicon median {timing['median_ms']} ms, p95 {timing['p95_ms']} ms "
          f"(title and first sentence: median {short_timing['median_ms']} ms, p95 {short_timing['p95_ms']} ms); "
          f"with the model median {timing_model['median_ms']} ms, p95 {timing_model['p95_ms']} ms")


def calibration_text(bands: Sequence[dict[str, Any]]) -> str:
    return "top topic's score: " + "; ".join(
        f"{band['from']:.2f}-{band['to']:.2f}: {band['accuracy']:.2f} right of {band['articles']}" for band in bands
    )


if __name__ == "__main__":
    main()
