"""The benchmark's feeds: N feeds of M entries, real or generated text, planted duplicates.

Text comes from a directory of articles (one ``.txt`` per article, title on the
first line, paragraphs after it, one folder per category, as in the BBC news
corpus) or, without one, from generated words. A corpus folder has fewer articles
than a default run needs, so each article is used as it is once; after that,
entries are new articles of the same category whose paragraphs are made of
sentences drawn from that category's shuffled sentences, so no two entries
repeat each other by accident. A share of entries are then replaced by exact
copies (another feed, another link) and by edited copies of earlier entries:
the duplicates and near duplicates dedupe should find.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
GENERATED_CATEGORIES = ("business", "politics", "sport", "tech", "entertainment")
VOCABULARY = 20_000
#: Latest publication date in the feeds; entries spread over the 28 days before it.
NEWEST = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Story:
    title: str
    category: str
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    guid: str
    link: str
    published: datetime
    story: Story


@dataclass(frozen=True)
class Corpus:
    feeds: list[list[Entry]]
    duplicates: int
    near_duplicates: int

    @property
    def entries(self) -> int:
        return sum(len(feed) for feed in self.feeds)


def read_stories(folder: Path) -> list[Story]:
    """Every ``category/*.txt`` article under ``folder``."""
    stories = []
    for path in sorted(folder.glob("*/*.txt")):
        lines = [line.strip() for line in path.read_bytes().decode("utf-8", "replace").splitlines()]
        lines = [line for line in lines if line]
        if len(lines) >= 2:
            stories.append(Story(lines[0], path.parent.name, tuple(lines[1:])))
    return stories


class RealText:
    """Stories from a corpus folder: each as it is once, then remixed from its category's sentences."""

    def __init__(self, stories: list[Story], rng: random.Random) -> None:
        self.rng = rng
        self.stories = stories[:]
        rng.shuffle(self.stories)
        self.sentences: dict[str, list[str]] = {}
        for story in stories:
            self.sentences.setdefault(story.category, []).extend(
                s for paragraph in story.paragraphs for s in SENTENCE_END.split(paragraph)
            )
        self.streams: dict[str, list[str]] = {}
        self.made = 0

    def _sentence(self, category: str) -> str:
        stream = self.streams.get(category)
        if not stream:
            stream = self.streams[category] = self.sentences[category][:]
            self.rng.shuffle(stream)
        return stream.pop()

    def story(self) -> Story:
        base = self.stories[self.made % len(self.stories)]
        cycle = self.made // len(self.stories)
        self.made += 1
        if cycle == 0:
            return base
        paragraphs = tuple(
            " ".join(self._sentence(base.category) for _ in range(self.rng.randint(2, 4)))
            for _ in base.paragraphs
        )
        return Story(f"{base.title} ({cycle + 1})", base.category, paragraphs)


class GeneratedText:
    """Stories of words drawn from a Zipf-distributed vocabulary, like news prose."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words = [f"w{i}" for i in range(VOCABULARY)]
        self.weights = [1.0 / (rank + 1) ** 1.1 for rank in range(VOCABULARY)]

    def _sentence(self) -> str:
        words = self.rng.choices(self.words, self.weights, k=self.rng.randint(8, 25))
        return " ".join(words).capitalize() + "."

    def story(self) -> Story:
        paragraphs = tuple(
            " ".join(self._sentence() for _ in range(self.rng.randint(2, 4))) for _ in range(self.rng.randint(3, 8))
        )
        return Story(self._sentence()[:-1], self.rng.choice(GENERATED_CATEGORIES), paragraphs)


def edited(story: Story, rng: random.Random) -> Story:
    """A near duplicate: a new title, the last paragraph cut, about one word in twenty changed."""
    paragraphs = list(story.paragraphs[:-1] if len(story.paragraphs) > 2 else story.paragraphs)
    for index, paragraph in enumerate(paragraphs):
        words = paragraph.split()
        for position in rng.sample(range(len(words)), len(words) // 20):
            words[position] = rng.choice(("reportedly", "officials", "on Monday", "said"))
        paragraphs[index] = " ".join(words)
    return Story(f"Update: {story.title}", story.category, tuple(paragraphs))


def build_corpus(
    feeds: int,
    entries: int,
    source: Path | None,
    seed: int = 7,
    duplicate_share: float = 0.03,
    near_share: float = 0.03,
) -> Corpus:
    """``feeds`` feeds of ``entries`` entries each, with planted copies of earlier entries."""
    rng = random.Random(seed)
    text = RealText(read_stories(source), rng) if source else GeneratedText(rng)
    grid: list[list[Entry]] = []
    for feed in range(feeds):
        grid.append([
            Entry(
                guid=f"bench-{feed}-{number}",
                link=f"https://news{feed}.example/stories/{number}",
                published=NEWEST - timedelta(minutes=rng.randint(0, 28 * 24 * 60)),
                story=text.story(),
            )
            for number in range(entries)
        ])
    duplicates = near = 0
    for feed in range(1, feeds):
        for number in range(entries):
            draw = rng.random()
            if draw >= duplicate_share + near_share:
                continue
            original = grid[rng.randrange(feed)][rng.randrange(entries)].story
            copy = original if draw < duplicate_share else edited(original, rng)
            grid[feed][number] = replace(grid[feed][number], story=copy)
            if draw < duplicate_share:
                duplicates += 1
            else:
                near += 1
    return Corpus(grid, duplicates, near)


def render_rss(title: str, site: str, entries: list[Entry]) -> bytes:
    """An RSS 2.0 document: summary in ``description``, the full HTML in ``content:encoded``."""
    items = []
    for entry in entries:
        body = "".join(f"<p>{escape(paragraph)}</p>" for paragraph in entry.story.paragraphs)
        items.append(
            "<item>"
            f"<title>{escape(entry.story.title)}</title>"
            f"<link>{escape(entry.link)}</link>"
            f'<guid isPermaLink="false">{entry.guid}</guid>'
            f"<pubDate>{format_datetime(entry.published)}</pubDate>"
            f"<dc:creator>Staff reporter</dc:creator>"
            f"<category>{entry.story.category}</category>"
            f"<description>{escape(entry.story.paragraphs[0])}</description>"
            f"<content:encoded>{escape(body)}</content:encoded>"
            "</item>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/"><channel>'
        f"<title>{escape(title)}</title><link>{escape(site)}</link><description>benchmark feed</description>"
        + "".join(items)
        + "</channel></rss>"
    ).encode()
