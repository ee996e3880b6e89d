"""Classify stage: the language, IPTC topics and countries of one article.

The labelling is a pure function of (title, text): no database, no
network; ``apply_classify`` and the Celery task at the end are the thin
layer that reads and writes the article row. The lexicon, the gazetteer and the language model are loaded once
per process, on first use, and kept (``functools.cache``).

* Language: py3langid, whose model ships inside the package.
* Topics: a hand-written weighted lexicon (``data/topics_lexicon.tsv``)
  matched in one Aho-Corasick pass over the lowercased title and text.
* Places: a country gazetteer (``data/places_gazetteer.tsv``) matched in one
  case-sensitive Aho-Corasick pass; the file's header documents how
  ambiguous names are resolved.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Callable, NamedTuple

import ahocorasick
from celery import shared_task
from py3langid.langid import MODEL_FILE, LanguageIdentifier
from sqlalchemy.orm import Session

from schemas.models import Article
from schemas.payloads import ArticleBatch, Classification
from schemas.settings import current_settings
from tasks.base import StageTask
from tasks.store import run_article_stage

DATA_DIR = Path(__file__).parent / "data"
TOPICS_FILE = DATA_DIR / "topics_lexicon.tsv"
PLACES_FILE = DATA_DIR / "places_gazetteer.tsv"

# The 17 top-level IPTC Media Topics.
TOPICS = (
    "arts_culture_entertainment",
    "conflict_war_peace",
    "crime_law_justice",
    "disaster_accident",
    "economy_business_finance",
    "education",
    "environment",
    "health",
    "human_interest",
    "labour",
    "lifestyle_leisure",
    "politics",
    "religion",
    "science_technology",
    "society",
    "sport",
    "weather",
)

# Language: enough of the start of an article to be sure, little enough to be fast.
LANGUAGE_SAMPLE_CHARS = 1000
MIN_LANGUAGE_LETTERS = 20
MIN_LANGUAGE_CONFIDENCE = 0.5
# py3langid labels that are not ISO 639-1 but belong to a language that is.
LANGUAGE_TO_ISO_639_1 = {
    "ary": "ar", "arz": "ar", "sdh": "ku", "uzs": "uz",
    "wuu": "zh", "yue": "zh", "gug": "gn", "kik": "ki",
}

# Topics: a title match counts this many times a body match.
TITLE_WEIGHT = 3.0
# Evidence is measured per 100 words, but a short text counts as this long,
# so a one-line brief with one strong term does not score as highly as a
# long article full of them.
MIN_WORDS_FOR_DENSITY = 120
# Evidence density (weight per 100 words) that maps to a score of 1 - 1/e.
# Calibrated on the seed articles and the BBC News corpus: a clear top topic
# has 5-15 per 100 words, a topic only touched on has under 2.
DENSITY_SCALE = 6.0
# A topic is kept if its score reaches MIN_TOPIC_SCORE (about 1.7 per 100
# words) and its density is at least MIN_SHARE_OF_BEST of the best topic's.
MIN_TOPIC_SCORE = 0.25
MIN_SHARE_OF_BEST = 0.3

_NOT_LETTERS = re.compile(r"[\W\d_]+")


class Match(NamedTuple):
    """One accepted automaton hit: where it starts and what it stands for."""

    start: int
    value: Any


# --- loading (once per process) ---------------------------------------------


@cache
def _language_identifier() -> LanguageIdentifier:
    """py3langid with probabilities, so low confidence can become None."""
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@cache
def _topic_automaton() -> ahocorasick.Automaton:
    """Lexicon terms -> (length, ((topic, weight, term, is_prefix), ...))."""
    entries: dict[str, list[tuple[str, float, str, bool]]] = defaultdict(list)
    for lineno, cols in _read_tsv(TOPICS_FILE):
        topic, term, weight = cols
        if topic not in TOPICS:
            raise ValueError(f"{TOPICS_FILE.name}:{lineno}: unknown topic {topic!r}")
        key = term.rstrip("*")
        if any(entry[0] == topic for entry in entries[key]):
            raise ValueError(f"{TOPICS_FILE.name}:{lineno}: {term!r} twice under {topic}")
        entries[key].append((topic, float(weight), term, term.endswith("*")))
    automaton = ahocorasick.Automaton()
    for key, values in entries.items():
        automaton.add_word(key, (len(key), tuple(values)))
    automaton.make_automaton()
    return automaton


@cache
def _place_automaton() -> ahocorasick.Automaton:
    """Gazetteer terms -> (length, (code, is_ambiguous)); code "-" blocks a phrase."""
    automaton = ahocorasick.Automaton()
    owner: dict[str, str] = {}
    for lineno, cols in _read_tsv(PLACES_FILE):
        code, *cells = cols
        for column, cell in enumerate(cells):
            for term in filter(None, cell.split("|")):
                ambiguous = term.startswith("?")
                term = term.lstrip("?")
                for key in _place_spellings(term, is_demonym=column == 1):
                    if owner.setdefault(key, code) != code:
                        raise ValueError(
                            f"{PLACES_FILE.name}:{lineno}: {key!r} is both "
                            f"{owner[key]} and {code}"
                        )
                    automaton.add_word(key, (len(key), (code, ambiguous)))
    automaton.make_automaton()
    return automaton


def _read_tsv(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, columns) of each data row; '#' lines are comments."""
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, 1):
            if line.strip() and not line.startswith("#"):
                yield lineno, line.rstrip("\n").split("\t")


def _place_spellings(term: str, is_demonym: bool) -> set[str]:
    """A gazetteer term as written, with a typographic apostrophe, and plural for demonyms."""
    spellings = {term}
    if is_demonym and not term.endswith(("s", "sh", "ch", "ese")):
        spellings.add(term + "s")
    return spellings | {s.replace("'", "\u2019") for s in spellings}


# --- matching -----------------------------------------------------------------


def _word_matches(
    automaton: ahocorasick.Automaton, text: str, accept: Callable[[Any, bool], Any]
) -> list[Match]:
    """Leftmost-longest automaton hits that start and end on word boundaries.

    Resolving overlaps ourselves (rather than ``iter_long``) keeps a shorter
    term when the longer one fails its boundary check ("oil" in "oil prices"
    when only "oil price" is a key). ``accept(value, ends_on_boundary)``
    returns the value to keep, or None to reject the hit.
    """
    candidates = []
    last = len(text) - 1
    for end, (length, value) in automaton.iter(text):
        start = end - length + 1
        if start and text[start - 1].isalnum():
            continue
        ends_on_boundary = end == last or not text[end + 1].isalnum()
        kept = accept(value, ends_on_boundary)
        if kept is not None:
            candidates.append((start, -length, kept))
    candidates.sort(key=lambda c: (c[0], c[1]))
    matches, free_from = [], 0
    for start, neg_length, value in candidates:
        if start >= free_from:
            matches.append(Match(start, value))
            free_from = start - neg_length
    return matches


def _topic_entries_at_boundary(entries, ends_on_boundary):
    """Lexicon entries valid for a hit: whole words, or prefixes ("vaccin*")."""
    if ends_on_boundary:
        return entries
    return tuple(e for e in entries if e[3]) or None


def _place_at_boundary(value, ends_on_boundary):
    """Gazetteer names are whole words only."""
    return value if ends_on_boundary else None


# --- stages -------------------------------------------------------------------


def detect_language(title: str, text: str) -> str | None:
    """ISO 639-1 code of the title and start of the text; None if too short or unsure."""
    sample = f"{title}\n{text[:LANGUAGE_SAMPLE_CHARS]}"
    if len(_NOT_LETTERS.sub("", sample)) < MIN_LANGUAGE_LETTERS:
        return None
    language, confidence = _language_identifier().classify(sample)
    language = LANGUAGE_TO_ISO_639_1.get(language, language)
    if confidence < MIN_LANGUAGE_CONFIDENCE or len(language) != 2:
        return None
    return language


def _topic_evidence(title: str, text: str) -> tuple[dict[str, Counter], int]:
    """Per topic, the weight each lexicon term contributed; and the word count.

    A term's weight grows with the log of its count (a title hit counting
    TITLE_WEIGHT times): the tenth "militia" adds less than the first.
    """
    title = title.lower()
    haystack = f"{title}\n{text.lower()}"
    counts: Counter[tuple[str, str, float]] = Counter()
    for start, entries in _word_matches(
        _topic_automaton(), haystack, _topic_entries_at_boundary
    ):
        hits = TITLE_WEIGHT if start < len(title) else 1.0
        for topic, weight, term, _ in entries:
            counts[topic, term, weight] += hits
    evidence: dict[str, Counter] = defaultdict(Counter)
    for (topic, term, weight), n in counts.items():
        evidence[topic][term] = weight * (1.0 + math.log(n))
    return evidence, len(haystack.split())


def score_topics(title: str, text: str) -> tuple[tuple[str, float], ...]:
    """IPTC topics with scores in [0, 1], best first; only those clearly present.

    A topic's evidence is its summed term weights per 100 words, so articles
    of different lengths compare; the score saturates with it. A topic is
    kept if its evidence is a fair share of the best topic's and its score
    reaches an absolute minimum.
    """
    evidence, words = _topic_evidence(title, text)
    per_100_words = 100.0 / max(words, MIN_WORDS_FOR_DENSITY)
    density = {topic: sum(terms.values()) * per_100_words for topic, terms in evidence.items()}
    if not density:
        return ()
    best = max(density.values())
    kept = []
    for topic, value in sorted(density.items(), key=lambda item: (-item[1], item[0])):
        score = 1.0 - math.exp(-value / DENSITY_SCALE)
        if value >= MIN_SHARE_OF_BEST * best and score >= MIN_TOPIC_SCORE:
            kept.append((topic, round(score, 4)))
    return tuple(kept)


def explain_topics(title: str, text: str) -> dict[str, list[tuple[str, float]]]:
    """Per topic (strongest first), the matched lexicon terms and the weight each added.

    Each weight is already title-boosted and log-damped (see _topic_evidence),
    so a topic's weights add up to the evidence behind its score.
    """
    evidence, _ = _topic_evidence(title, text)
    explained = {
        topic: sorted(((term, round(w, 3)) for term, w in terms.items()),
                      key=lambda item: (-item[1], item[0]))
        for topic, terms in evidence.items()
    }
    return dict(sorted(explained.items(), key=lambda item: -sum(w for _, w in item[1])))


def find_places(title: str, text: str) -> tuple[str, ...]:
    """ISO 3166-1 alpha-2 codes of the countries mentioned, most mentioned first.

    An all-caps title is skipped ("LET US" is not the United States).
    Ambiguous names ("Georgia") count only if the country is also named
    unambiguously; ties go to the country mentioned first.
    """
    haystack = f"{'' if title.isupper() else title}\n{text}"
    counts: Counter[str] = Counter()
    ambiguous: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for start, (code, is_ambiguous) in _word_matches(
        _place_automaton(), haystack, _place_at_boundary
    ):
        if code == "-":
            continue
        (ambiguous if is_ambiguous else counts)[code] += 1
        first_seen.setdefault(code, start)
    for code, n in ambiguous.items():
        if code in counts:
            counts[code] += n
    return tuple(sorted(counts, key=lambda code: (-counts[code], first_seen[code])))


def classify_article(title: str, text: str) -> Classification:
    """Language, topics and places of one article (title and plain text)."""
    title, text = title or "", text or ""
    return Classification(
        language=detect_language(title, text),
        topics=score_topics(title, text),
        places=find_places(title, text),
    )


def apply_classify(_session: Session, article: Article) -> None:
    """Label one stored article from its clean title and text."""
    result = classify_article(article.title or "", article.text or "")
    article.language = result.language
    article.topics = [[label, score] for label, score in result.topics]
    article.places = list(result.places)


@shared_task(base=StageTask, name="feedmill.classify")
def classify_task(message: dict) -> None:
    batch = ArticleBatch.from_message(message)
    run_article_stage(current_settings(), "classify", batch.article_ids, apply_classify)
