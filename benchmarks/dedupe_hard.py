"""Evaluate dedupe on harder copies of BBC News articles, as syndication makes them.

    .venv/bin/python benchmarks/dedupe_hard.py --corpus ../shared/data/bbc [--originals 66] [--seeds 1,2] [--json]

Per seed: ``--originals`` corpus articles (none with a same-story twin in the
corpus) each get 1 to 3 copies of the kinds below, each copy in another of six
feeds and published 10 minutes to 6 hours after its original, plus the most
similar other corpus article (word 2-shingle Jaccard) as a distractor. Every
article then arrives in a random order, whatever its publication time, and the
real dedupe stage runs over them in small batches in that order, as concurrent
workers would leave them.

Copy kinds:
* ``teaser``: the lead paragraph alone, with a "Read the full story" line;
* ``substituted``: 15% of words replaced by random corpus words;
* ``substituted_reordered``: the same, paragraphs shuffled;
* ``updated``: two new paragraphs appended, half of them with a dateline and footer;
* ``ads_cut``: "Advertisement" / "Read more: ..." lines inserted, the last third cut;
* ``rewritten_lead``: the lead's clauses reordered, 10% of words replaced, ad lines inserted.

Scores, per kind and overall:
* recall: share of copies in their original's cluster;
* precision: share of the pairs a cluster makes with a copy (or a distractor) that are
  one story (the same original, or a pair that exact word 5-shingle Jaccard >= 0.5 calls
  the same story);
* marked as expected: share of originals with no ``duplicate_of`` and of copies whose
  ``duplicate_of`` is their original (the earliest published copy of the story).

The corpus is read from where it lies; nothing of it is written anywhere but the temporary store.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from itertools import combinations
from pathlib import Path

from articles_db import add_articles, add_feed, store_settings
from dedupe_bbc import SAME_STORY, Components, load_corpus, reference_pairs
from sqlalchemy import select

from schemas.db import session_scope
from schemas.models import Article
from schemas.payloads import chunked
from tasks.dedupe import run_dedupe

KINDS = ("teaser", "substituted", "substituted_reordered", "updated", "ads_cut", "rewritten_lead")
#: How often each kind is drawn (the issue's set: teasers and updates twice as often).
KIND_WEIGHTS = (2, 1, 1, 2, 1, 2)
FEEDS = 6
OUTLETS = ("Daily Wire", "Metro Post", "News Digest", "The Courier", "Global Times", "City Herald")
CITIES = ("LONDON", "NEW YORK", "PARIS", "BRUSSELS", "TOKYO", "WASHINGTON")
BASE_TIME = datetime(2005, 3, 1, 8, 0, tzinfo=timezone.utc)


def paragraphs(body: str) -> list[str]:
    return [p.strip() for p in body.split("\n") if p.strip()]


def replace_words(text: str, share: float, rng: random.Random, vocabulary: list[str]) -> str:
    """Replace ``share`` of the words (not the line breaks) with random corpus words."""
    lines = text.split("\n")
    tokens = [(n, i) for n, line in enumerate(lines) for i, _ in enumerate(line.split(" ")) if line]
    split = [line.split(" ") for line in lines]
    for n, i in rng.sample(tokens, max(1, round(len(tokens) * share))):
        split[n][i] = rng.choice(vocabulary)
    return "\n".join(" ".join(words) for words in split)


def reorder_clauses(lead: str) -> str:
    """The lead's clauses in another order: the last comma-separated clause first."""
    clauses = [c.strip() for c in re.split(r",\s+", lead.rstrip(".")) if c.strip()]
    if len(clauses) < 2:
        words = lead.rstrip(".").split()
        half = len(words) // 2
        clauses = [" ".join(words[half:]), " ".join(words[:half])]
    rotated = clauses[-1:] + clauses[:-1]
    return (", ".join(rotated) + ".").capitalize()


def with_ads(parts: list[str], rng: random.Random, headlines: list[str]) -> list[str]:
    """Insert an "Advertisement" or "Read more: ..." line after every second paragraph."""
    out = []
    for n, part in enumerate(parts):
        out.append(part)
        if n % 2 == 1 and n < len(parts) - 1:
            out.append("Advertisement" if rng.random() < 0.5 else f"Read more: {rng.choice(headlines)}")
    return out


def make_copy(kind: str, body: str, rng: random.Random, vocabulary: list[str], headlines: list[str],
              other_bodies: list[str], outlet: str) -> str:
    parts = paragraphs(body)
    if kind == "teaser":
        return f"{parts[0]}\n\nRead the full story at {outlet}."
    if kind == "substituted":
        return replace_words("\n\n".join(parts), 0.15, rng, vocabulary)
    if kind == "substituted_reordered":
        changed = paragraphs(replace_words("\n\n".join(parts), 0.15, rng, vocabulary))
        rng.shuffle(changed)
        return "\n\n".join(changed)
    if kind == "updated":
        extra = paragraphs(rng.choice(other_bodies))[1:3] or ["More details are expected later today."]
        parts = parts + [f"UPDATE: {extra[0]}"] + extra[1:]
        if rng.random() < 0.5:
            parts[0] = f"{rng.choice(CITIES)} ({outlet}) - {parts[0]}"
            parts.append(f"(Reporting by {outlet} staff; editing by the {outlet} desk)")
        return "\n\n".join(parts)
    if kind == "ads_cut":
        words = "\n\n".join(parts).split(" ")
        kept = paragraphs(" ".join(words[: 2 * len(words) // 3]))
        return "\n\n".join(with_ads(kept, rng, headlines))
    if kind == "rewritten_lead":
        parts = [reorder_clauses(parts[0])] + parts[1:]
        changed = paragraphs(replace_words("\n\n".join(parts), 0.10, rng, vocabulary))
        return "\n\n".join(with_ads(changed, rng, headlines))
    raise ValueError(kind)


def word_shingles(body: str, size: int) -> set[str]:
    tokens = re.findall(r"\w+", body.casefold())
    return {" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def build(docs: list[tuple[str, str, str]], same_story: Components, twins: set[int], originals: int,
          seed: int) -> list[dict]:
    """The planted set: one dict per article, in arrival order."""
    rng = random.Random(seed)
    bodies = [body for _, _, body in docs]
    vocabulary = sorted({w for body in bodies[::7] for w in body.split()})
    headlines = [title for _, title, _ in docs]
    chosen = rng.sample([i for i in range(len(docs)) if i not in twins and len(paragraphs(bodies[i])) >= 3], originals)
    bigrams = [word_shingles(body, 2) for body in bodies]
    taken = set(chosen)
    distractors = {}
    for story in chosen:
        distractors[story] = max(
            (j for j in range(len(docs)) if j not in taken and same_story.find(j) != same_story.find(story)),
            key=lambda j: len(bigrams[story] & bigrams[j]) / (len(bigrams[story] | bigrams[j]) or 1),
        )
        taken.add(distractors[story])
    # Updates bring text of no planted story: paragraphs of corpus articles left out of the set.
    unused = [bodies[i] for i in range(len(docs)) if i not in taken]
    articles = []
    for story in chosen:
        feeds = rng.sample(range(FEEDS), 4)
        published = BASE_TIME + timedelta(minutes=rng.randrange(0, 7 * 24 * 60))
        articles.append({"story": story, "kind": "original", "feed": feeds[0], "published": published,
                         "title": docs[story][1], "text": bodies[story]})
        for feed in feeds[1 : 1 + rng.randint(1, 3)]:
            kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
            articles.append({
                "story": story, "kind": kind, "feed": feed,
                "published": published + timedelta(minutes=rng.randrange(10, 6 * 60)),
                "title": docs[story][1] if kind != "rewritten_lead" else f"{docs[story][1]} (updated)",
                "text": make_copy(kind, bodies[story], rng, vocabulary, headlines, unused, OUTLETS[feed]),
            })
        similar = distractors[story]
        articles.append({"story": similar, "kind": "distractor", "feed": rng.randrange(FEEDS),
                         "published": BASE_TIME + timedelta(minutes=rng.randrange(0, 7 * 24 * 60)),
                         "title": docs[similar][1], "text": bodies[similar]})
    rng.shuffle(articles)
    return articles


def run(articles: list[dict], batch: int, database_url: str | None) -> tuple[dict[int, tuple], list[int]]:
    """Store the articles in arrival order and dedupe them in batches; return article index ->
    (cluster_id, duplicate_of), and the stored ids."""
    with tempfile.TemporaryDirectory() as home:
        settings = store_settings(Path(home), database_url)
        feed_ids = [add_feed(settings, f"https://outlet{n}.example/feed") for n in range(FEEDS)]
        ids = [add_articles(settings, feed_ids[a["feed"]], [(a["title"], a["text"])], [a["published"]])[0]
               for a in articles]
        for chunk in chunked(ids, batch):
            run_dedupe(settings, chunk)
        with session_scope(settings) as session:
            stored = dict(
                (row.id, (row.cluster_id, row.duplicate_of))
                for row in session.execute(select(Article.id, Article.cluster_id, Article.duplicate_of))
            )
    index_of = {article_id: n for n, article_id in enumerate(ids)}
    return {index_of[i]: value for i, value in stored.items()}, ids


def score(articles: list[dict], stored: dict, ids: list[int], same_story: Components) -> dict:
    id_of = dict(enumerate(ids))
    original_of = {a["story"]: n for n, a in enumerate(articles) if a["kind"] == "original"}
    members = defaultdict(list)
    for n, (cluster, _) in stored.items():
        members[cluster].append(n)
    found, total, linked, correct, expected = Counter(), Counter(), Counter(), Counter(), Counter()
    for n, article in enumerate(articles):
        kind = article["kind"]
        if kind in ("original", "distractor"):
            if kind == "original":
                total["expected"] += 1
                expected[kind] += stored[n][1] is None
            continue
        total[kind] += 1
        original = original_of[article["story"]]
        found[kind] += stored[n][0] == stored[original][0]
        total["expected"] += 1
        expected[kind] += stored[n][1] == id_of[original]
    for cluster_members in members.values():
        for a, b in combinations(cluster_members, 2):
            one_story = same_story.find(articles[a]["story"]) == same_story.find(articles[b]["story"])
            for n in {a, b}:
                kind = articles[n]["kind"]
                if kind != "original":
                    linked[kind] += 1
                    correct[kind] += one_story
            linked["all"] += 1
            correct["all"] += one_story
    copies = sum(total[k] for k in KINDS)
    return {
        "copies": copies,
        "recall": round(sum(found.values()) / copies, 4),
        "precision": round(correct["all"] / linked["all"], 4) if linked["all"] else 1.0,
        "marked_as_expected": round(sum(expected.values()) / total["expected"], 4),
        "by_kind": {
            kind: {
                "copies": total[kind], "found": found[kind],
                "recall": round(found[kind] / total[kind], 4) if total[kind] else None,
                "precision": round(correct[kind] / linked[kind], 4) if linked[kind] else 1.0,
                "marked_as_expected": round(expected[kind] / total[kind], 4) if total[kind] else None,
            }
            for kind in KINDS
        },
        "distractor_pairs_linked": linked["distractor"] - correct["distractor"],
        "originals_marked_as_expected": round(expected["original"] / len(original_of), 4),
    }


def evaluate(corpus: Path, originals: int, seeds: list[int], batch: int, database_url: str | None) -> dict:
    docs = load_corpus(corpus)
    same_story = Components(len(docs))
    twins = set()
    for (i, j), similarity in reference_pairs([body for _, _, body in docs]).items():
        if similarity >= SAME_STORY:
            same_story.union(i, j)
            twins |= {i, j}
    runs = []
    for seed in seeds:
        articles = build(docs, same_story, twins, originals, seed)
        stored, ids = run(articles, batch, database_url)
        runs.append({"seed": seed, **score(articles, stored, ids, same_story)})
    return {"originals": originals, "batch": batch, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="the BBC News folder (<class>/*.txt)")
    parser.add_argument("--originals", type=int, default=66)
    parser.add_argument("--seeds", default="1,2", help="one planted set per seed, comma-separated")
    parser.add_argument("--batch", type=int, default=8, help="articles per dedupe batch")
    parser.add_argument("--database-url", help="store to use instead of a temporary SQLite file (must be empty)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = parser.parse_args()
    report = evaluate(args.corpus, args.originals, [int(s) for s in args.seeds.split(",")], args.batch,
                      args.database_url)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    for result in report["runs"]:
        print(f"seed {result['seed']}: {result['copies']} copies, recall {result['recall']}, precision "
              f"{result['precision']}, marked as expected {result['marked_as_expected']} "
              f"(originals {result['originals_marked_as_expected']}), "
              f"distractor pairs linked {result['distractor_pairs_linked']}")
        for kind, row in result["by_kind"].items():
            print(f"  {kind:<22} {row['found']:>3} of {row['copies']:<3} recall {row['recall']}  "
                  f"precision {row['precision']}  marked as expected {row['marked_as_expected']}")


if __name__ == "__main__":
    main()
