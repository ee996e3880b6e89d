"""Which LSH band layouts make which copies candidates, and how many false sharers each brings.

    .venv/bin/python benchmarks/band_layouts.py --corpus ../shared/data/bbc [--seeds 1,...,10]
        [--articles 10000] [--json]

A layout is, per signature kind, a number of bands and values per band over the signatures
``tasks.dedupe.fingerprint`` computes (the 3-word shingle signature the index had until
migration 0016 is computed here as it was). For each layout:

* per copy kind of ``dedupe_hard.py``'s planted sets (``--seeds``): how many copies share a
  band with their original, the candidates the stage can confirm (a copy no band finds is lost,
  whatever the exact check would say);
* among ``--articles`` articles of ``scale.py``'s corpus (``corpus.py`` on the same folder:
  BBC sentences redrawn into new articles, planted copies included), how many earlier articles
  per article share a band key with it: the rows dedupe reads beyond the band lookups, which
  grow with the store;
* the band rows an article writes.

Nothing is stored: band keys here are the signature slices themselves, equal exactly when the
index's keys are.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from corpus import build_corpus
from dedupe_bbc import SAME_STORY, Components, load_corpus, reference_pairs
from dedupe_hard import build

from tasks.dedupe import Fingerprint, fingerprint, minhash
from tasks.storage.clusters import LEAD

#: The kind the index had until migration 0016: MinHash of the text's 3-word shingles.
THREE_WORD_SHINGLES = 3
#: Layout name -> signature kind -> (bands, values per band).
LAYOUTS: dict[str, dict[int, tuple[int, int]]] = {
    "before 0016: 2w 42x3, 3w 42x3, lead 20x3": {2: (42, 3), THREE_WORD_SHINGLES: (42, 3), LEAD: (20, 3)},
    "2w 42x3, lead 20x3": {2: (42, 3), LEAD: (20, 3)},
    "now: 2w 32x3, lead 20x3": {2: (32, 3), LEAD: (20, 3)},
    "2w 32x4, lead 20x3": {2: (32, 4), LEAD: (20, 3)},
    "3w 42x3, lead 20x3": {THREE_WORD_SHINGLES: (42, 3), LEAD: (20, 3)},
}


def signatures(text: str) -> dict[int, np.ndarray]:
    fp: Fingerprint = fingerprint(text)
    if not fp.signatures:
        return {}
    return {**fp.signatures, THREE_WORD_SHINGLES: minhash(fp.shingles.sequence)}


def bands(by_kind: dict[int, np.ndarray], layout: dict[int, tuple[int, int]]) -> set[tuple[int, int, bytes]]:
    return {
        (kind, band, by_kind[kind][band * rows : (band + 1) * rows].tobytes())
        for kind, (count, rows) in layout.items() if kind in by_kind
        for band in range(min(count, len(by_kind[kind]) // rows))
    }


def copies_found(corpus: Path, seeds: list[int]) -> dict[str, dict[str, int]]:
    """Copy kind -> layout (and "copies") -> copies sharing a band with their original."""
    docs = load_corpus(corpus)
    same_story, twins = Components(len(docs)), set()
    for (i, j), similarity in reference_pairs([body for _, _, body in docs]).items():
        if similarity >= SAME_STORY:
            same_story.union(i, j)
            twins |= {i, j}
    found: dict[str, Counter] = defaultdict(Counter)
    for seed in seeds:
        articles = build(docs, same_story, twins, 66, seed)
        originals = {a["story"]: signatures(a["text"]) for a in articles if a["kind"] == "original"}
        for article in articles:
            if article["kind"] in ("original", "distractor"):
                continue
            copy, original = signatures(article["text"]), originals[article["story"]]
            found[article["kind"]]["copies"] += 1
            for name, layout in LAYOUTS.items():
                found[article["kind"]][name] += bool(bands(copy, layout) & bands(original, layout))
    return {kind: dict(counts) for kind, counts in found.items()}


def sharers(corpus: Path, articles: int) -> dict[str, dict[str, float]]:
    """Layout -> band rows an article writes, and earlier articles sharing a band, per article."""
    made = build_corpus(max(1, articles // 50), 50, corpus)
    texts = ["\n\n".join(entry.story.paragraphs) for feed in made.feeds for entry in feed]
    all_signatures = [signatures(text) for text in texts]
    result = {}
    for name, layout in LAYOUTS.items():
        index: dict[tuple, set[int]] = defaultdict(set)
        shared = rows = 0
        for n, by_kind in enumerate(all_signatures):
            keys = bands(by_kind, layout)
            rows += len(keys)
            shared += len(set().union(*(index[key] for key in keys)))
            for key in keys:
                index[key].add(n)
        result[name] = {"band_rows": round(rows / len(texts), 1), "sharers_per_article": round(shared / len(texts), 3)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="the BBC News folder (<class>/*.txt)")
    parser.add_argument("--seeds", default="1,2,3,4,5,6,7,8,9,10", help="dedupe_hard.py's planted sets")
    parser.add_argument("--articles", type=int, default=10_000, help="scale.py corpus articles for the sharers")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.corpus.is_dir():
        sys.exit(f"band_layouts: {args.corpus} is not a folder")
    report = {
        "copies_found": copies_found(args.corpus, [int(seed) for seed in args.seeds.split(",")]),
        "sharers": sharers(args.corpus, args.articles),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    kinds = report["copies_found"]
    print("layout | band rows | sharers per article | " + " | ".join(f"{k} ({c['copies']})" for k, c in kinds.items()))
    for name in LAYOUTS:
        load = report["sharers"][name]
        print(f"{name} | {load['band_rows']} | {load['sharers_per_article']} | "
              + " | ".join(str(counts[name]) for counts in kinds.values()))


if __name__ == "__main__":
    main()
