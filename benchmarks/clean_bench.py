"""Time the clean stage per article: feed HTML, and full-page extraction.

    .venv/bin/python benchmarks/clean_bench.py --corpus ../shared/data/bbc [--pages N] [--json]

Every BBC News article is wrapped as a feed item carries it (title repeated,
"TT" and "20" widgets, a captioned figure, a share row, a feed's own furniture
lines) and cleaned as the stage does: draft, fingerprints, furniture removal,
summary, HTML. For ``--pages`` of them, the article is also wrapped in a whole
web page (navigation, header, scripts, a "most read" aside, comments, footer)
and timed through trafilatura's extraction plus the same cleaning: the work a
summary-only entry costs on top of its page fetch (the network is not timed).
Pure functions only: no database, no broker. The corpus is read where it lies.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from schemas.payloads import RawEntry
from tasks.clean.entry import draft_entry, draft_with_page, finish_entry
from tasks.clean.furniture import learn_furniture, paragraph_fingerprints
from tasks.fulltext import extract_page

FURNITURE = ("Listen to this article", "Get the Morning Briefing in your inbox every weekday.", "© Example News 2005")


def read_corpus(corpus: Path) -> list[tuple[str, list[str]]]:
    """(title, paragraphs) of every article; the first line of a file is its title."""
    articles = []
    for path in sorted(corpus.glob("*/*.txt")):
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        articles.append((lines[0], lines[1:]))
    return articles


def feed_item(number: int, title: str, paragraphs: list[str]) -> RawEntry:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    content = (
        f"<p>{FURNITURE[0]}</p><h2>{title}</h2><p>TT</p><p>20</p>"
        f'<figure><img src="/img/{number}.jpg"><figcaption>{title} (Reuters)</figcaption></figure>'
        f'{body}<p>{FURNITURE[1]}</p><div>Share | Tweet | <a href="#comments">0 Comments</a></div><p>{FURNITURE[2]}</p>'
        '<img src="https://pixel.example/t.gif" width="1" height="1">'
    )
    return RawEntry(f"k{number}", None, f"https://news.example/{number}?utm_source=rss", title, None, None,
                    None, content, "hash")


def web_page(number: int, title: str, paragraphs: list[str]) -> str:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    links = "".join(f'<li><a href="/section/{n}">Section {n}</a></li>' for n in range(12))
    most_read = "".join(f'<li><a href="/story/{number + n}">Another story headline number {n}</a></li>' for n in range(8))
    return (
        f'<!doctype html><html><head><title>{title} - Example News</title><meta charset="utf-8">'
        '<meta property="article:published_time" content="2005-02-14T08:00:00Z">'
        "<script>window.dataLayer=[];function track(){}</script><style>body{font:16px serif}</style></head>"
        f'<body><header><a href="/">Example News</a><nav><ul>{links}</ul></nav></header>'
        f'<main><article><h1>{title}</h1><div class="byline">By a Staff Reporter</div>'
        f'<figure><img src="/img/{number}.jpg"><figcaption>{title} (Reuters)</figcaption></figure>{body}'
        '<div class="share">Share | Tweet | Email</div></article>'
        f'<aside><h3>Most read</h3><ol>{most_read}</ol></aside>'
        '<section id="comments"><h3>Comments</h3><p>Be the first to comment.</p></section></main>'
        "<footer><p>Copyright 2005 Example News Ltd. All rights reserved.</p><p>Terms | Privacy | Cookies</p></footer>"
        "<script>track('pageview')</script></body></html>"
    )


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "articles": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 3),
    }


def time_feed_html(items: list[RawEntry]) -> list[float]:
    # The furniture a feed of such items has learned, as the stage would know it.
    furniture = learn_furniture([paragraph_fingerprints(draft_entry(item).blocks) for item in items[:50]])
    samples = []
    for item in items:
        started = time.perf_counter()
        draft = draft_entry(item)
        paragraph_fingerprints(draft.blocks)
        finish_entry(draft, furniture)
        samples.append(time.perf_counter() - started)
    return samples


def time_full_page(pages: list[tuple[RawEntry, bytes]]) -> list[float]:
    samples = []
    for entry, body in pages:
        started = time.perf_counter()
        page = extract_page(body, entry.link or "")
        finish_entry(draft_with_page(entry, page))
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="the BBC News folder (one folder per class)")
    parser.add_argument("--pages", type=int, default=500, help="articles also timed as whole web pages")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    corpus = read_corpus(args.corpus)
    items = [feed_item(n, title, paragraphs) for n, (title, paragraphs) in enumerate(corpus)]
    step = max(1, len(corpus) // max(args.pages, 1))
    pages = [
        (RawEntry(f"p{n}", None, f"https://news.example/{n}", title, None, None, "<p>Short teaser.</p>", None, "h"),
         web_page(n, title, paragraphs).encode())
        for n, (title, paragraphs) in list(enumerate(corpus))[::step][: args.pages]
    ]
    time_feed_html(items[:100])  # warm up imports and caches
    report = {
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "feed_html": percentiles(time_feed_html(items)),
    }
    if pages:  # --pages 0 times the feed HTML only
        time_full_page(pages[:10])
        report["full_page"] = percentiles(time_full_page(pages))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"machine: {report['machine']}")
    for name in ("feed_html", "full_page"):
        if r := report.get(name):
            print(f"{name:>10}: {r['articles']} articles, median {r['median_ms']} ms, p95 {r['p95_ms']} ms")


if __name__ == "__main__":
    main()
