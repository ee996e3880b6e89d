"""Evaluate dedupe on the BBC News corpus with planted edited copies.

    .venv/bin/python benchmarks/dedupe_bbc.py --corpus ../shared/data/bbc [--sample N] [--json]

Every corpus article goes into one feed; for ``--sample`` of them (all by
default) four edited copies go into a second feed: a new dateline and footer;
the last third cut; 5% of words replaced; all three together. The copies come
after the originals, shuffled, and everything runs through the real dedupe
stage on a fresh SQLite store (or ``--database-url``).

Scores:
* planted pairs: recall = share of (original, copy) pairs put in one cluster;
  precision = share of the pairs a cluster makes with a copy that are the same
  story (the copy's original, its other copies, or an article the reference
  calls the same story as the original);
* the corpus's own duplicates: the reference is exact Jaccard of word
  5-shingles, computed here independently of MinHash: >= 0.5 is the same
  story, >= 0.2 a related one, below that unrelated;
* merges of unrelated stories: clusters whose articles do not all connect
  through related pairs (target 0).

The corpus is read from where it lies; nothing of it is written anywhere but
the temporary store.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

from articles_db import add_articles, add_feed, clusters_of, dedupe_all, store_settings

SAME_STORY, RELATED = 0.5, 0.2
VARIANTS = ("dateline_footer", "cut_last_third", "change_5pct", "all_three")
CITIES = ("LONDON", "NEW YORK", "PARIS", "BRUSSELS", "TOKYO", "WASHINGTON", "SYDNEY", "MUMBAI")
MONTHS = ("Jan", "Feb", "March", "April", "May", "June", "July", "Aug", "Sept", "Oct", "Nov", "Dec")
AGENCIES = ("Newswire", "Wire Services", "World Press")
NAMES = ("Anna Smith", "Joe Bloggs", "Maria Garcia", "Li Wei", "Tom Brown", "Sara Khan")


def load_corpus(corpus: Path) -> list[tuple[str, str, str]]:
    """(class/file, title, body) of every article: the first line is the title."""
    found = []
    for path in sorted(corpus.glob("*/*.txt")):
        title, _, body = path.read_text(encoding="utf-8", errors="replace").partition("\n")
        found.append((f"{path.parent.name}/{path.name}", title.strip(), body.strip()))
    if not found:
        raise SystemExit(f"no <class>/*.txt articles under {corpus}")
    return found


def plant(body: str, variant: str, rng: random.Random, vocabulary: list[str]) -> str:
    """An edited copy of ``body``, as another outlet would run it."""
    if variant in ("cut_last_third", "all_three"):
        tokens = body.split(" ")
        body = " ".join(tokens[: 2 * len(tokens) // 3])
    if variant in ("change_5pct", "all_three"):
        tokens = body.split(" ")
        for i in rng.sample(range(len(tokens)), max(1, len(tokens) // 20)):
            tokens[i] = rng.choice(vocabulary)
        body = " ".join(tokens)
    if variant in ("dateline_footer", "all_three"):
        body = (
            f"{rng.choice(CITIES)}, {rng.choice(MONTHS)} {rng.randint(1, 28)} ({rng.choice(AGENCIES)}) - {body}"
            f"\n\n(Reporting by {rng.choice(NAMES)}; editing by {rng.choice(NAMES)})"
            "\n\nCopyright 2005. All rights reserved. Sign up for our daily briefing."
        )
    return body


def reference_pairs(bodies: list[str]) -> dict[tuple[int, int], float]:
    """Exact word-5-shingle Jaccard of every pair of texts sharing a shingle (no MinHash: the reference)."""
    sets = []
    for body in bodies:
        tokens = re.findall(r"\w+", body.casefold())
        sets.append({" ".join(tokens[i : i + 5]) for i in range(len(tokens) - 4)})
    postings: dict[str, list[int]] = defaultdict(list)
    for i, shingles in enumerate(sets):
        for shingle in shingles:
            postings[shingle].append(i)
    shared: Counter[tuple[int, int]] = Counter()
    for docs in postings.values():
        if 1 < len(docs) < 200:  # a shingle in 200 articles is boilerplate, not a story
            shared.update(combinations(docs, 2))
    return {
        (i, j): n / (len(sets[i]) + len(sets[j]) - n) for (i, j), n in shared.items()
    }


class Components:
    """Union-find over article indexes."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def evaluate(corpus: Path, sample: int | None, seed: int, database_url: str | None) -> dict:
    rng = random.Random(seed)
    docs = load_corpus(corpus)
    bodies = [body for _, _, body in docs]
    vocabulary = sorted({w for body in bodies[::7] for w in body.split()})
    planted_of = sorted(rng.sample(range(len(docs)), sample)) if sample else list(range(len(docs)))
    copies = [(i, variant, plant(bodies[i], variant, rng, vocabulary)) for i in planted_of for variant in VARIANTS]
    rng.shuffle(copies)

    reference = reference_pairs(bodies)
    same_story, related = Components(len(docs)), Components(len(docs))
    for (i, j), similarity in reference.items():
        if similarity >= SAME_STORY:
            same_story.union(i, j)
        if similarity >= RELATED:
            related.union(i, j)

    with tempfile.TemporaryDirectory() as home:
        settings = store_settings(Path(home), database_url)
        original_ids = add_articles(settings, add_feed(settings, "https://bbc.example/feed"), [(t, b) for _, t, b in docs])
        copy_ids = add_articles(settings, add_feed(settings, "https://wire.example/feed"), [("", c[2]) for c in copies])
        seconds = dedupe_all(settings, original_ids + copy_ids)
        cluster = clusters_of(settings, original_ids + copy_ids)

    # Each stored article stands for a corpus index: an original for itself, a copy for its original.
    story_of = {aid: i for i, aid in enumerate(original_ids)} | {aid: c[0] for aid, c in zip(copy_ids, copies)}
    members: dict[int, list[int]] = defaultdict(list)
    for aid, cid in cluster.items():
        members[cid].append(aid)

    hits: Counter[str] = Counter(
        variant for aid, (i, variant, _) in zip(copy_ids, copies) if cluster[aid] == cluster[original_ids[i]]
    )
    copy_set = set(copy_ids)
    linked_pairs = correct_pairs = 0
    for ids in members.values():
        for a, b in combinations(ids, 2):
            if a in copy_set or b in copy_set:
                linked_pairs += 1
                correct_pairs += same_story.find(story_of[a]) == same_story.find(story_of[b])
    corpus_truth = [(i, j) for (i, j), s in reference.items() if s >= SAME_STORY]
    corpus_found = sum(cluster[original_ids[i]] == cluster[original_ids[j]] for i, j in corpus_truth)
    corpus_extra = Counter()
    for ids in members.values():
        originals = sorted(story_of[a] for a in ids if a not in copy_set)
        for i, j in combinations(originals, 2):
            similarity = reference.get((i, j), 0.0)
            if similarity < SAME_STORY:
                corpus_extra["related" if similarity >= RELATED else "unrelated"] += 1
    unrelated_merges = [
        sorted({docs[story_of[a]][0] for a in ids})
        for ids in members.values()
        if len({related.find(story_of[a]) for a in ids}) > 1
    ]
    planted = len(copies)
    return {
        "corpus_articles": len(docs),
        "planted_copies": planted,
        "planted_recall": round(sum(hits.values()) / planted, 4),
        "planted_recall_by_edit": {v: round(hits[v] / (planted // len(VARIANTS)), 4) for v in VARIANTS},
        "planted_precision": round(correct_pairs / linked_pairs, 4) if linked_pairs else 1.0,
        "corpus_same_story_pairs": len(corpus_truth),
        "corpus_same_story_pairs_found": corpus_found,
        "corpus_pairs_clustered_below_reference": dict(corpus_extra),
        "clusters_merging_unrelated_stories": len(unrelated_merges),
        "unrelated_merges": unrelated_merges[:10],
        "articles_deduped": len(cluster),
        "ms_per_article": round(1000 * seconds / len(cluster), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="the BBC News folder (<class>/*.txt)")
    parser.add_argument("--sample", type=int, help="plant copies of this many articles (default: all)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--database-url", help="store to use instead of a temporary SQLite file (must be empty)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = parser.parse_args()
    scores = evaluate(args.corpus, args.sample, args.seed, args.database_url)
    if args.json:
        json.dump(scores, sys.stdout, indent=2)
        print()
        return
    for key, value in scores.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
