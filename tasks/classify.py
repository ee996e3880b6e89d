"""Classify stage: the language, topics, countries, tags and drop decision of one article.

The labelling is a pure function of (title, text) and, when the operator
has them, a trained model and rules: no network. ``classify_changes`` and the
Celery task at the end are the thin layer that reads and writes the article
row. The lexicon, the gazetteer and the language model are loaded once per
process, on first use, and kept (``functools.cache``); a worker that consumes
the classify queue loads them before forking its pool (``load_models``).

* Language: py3langid, whose model ships inside the package.
* Topics: a hand-written weighted lexicon (``data/topics_lexicon.tsv``) and,
  at a lower weight, a broad vocabulary generated from WordNet
  (``data/topics_wordnet.tsv``), matched in one Aho-Corasick pass over the
  lowercased title and text; or,
  when one is active, the operator's trained model (``classify_model``),
  which then replaces the lexicon for topics.
* Places: a country gazetteer (``data/places_gazetteer.tsv``) matched in one
  case-sensitive Aho-Corasick pass; the file's header documents how
  ambiguous names are resolved.
* Tags and drops: the operator's rules (``rules``).

The model and the rules are looked up once per batch (``load_setup``), so a
newly activated model or a new rule applies from the next batch on.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import ahocorasick
import numpy as np
from celery import shared_task
from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier
from py3langid.modelio import load_model
from sqlalchemy import Row
from sqlalchemy.orm import Session

from schemas.db import session_scope
from schemas.models import Article
from schemas.payloads import ArticleBatch, Classification, TopicEvidence
from schemas.pipeline import stage_named
from schemas.settings import Settings, current_settings
from tasks.base import StageTask, hand_on_articles
from tasks.classify_model import TopicModel, active_model
from tasks.rules import CompiledRule, RuleOutcome, apply_rules, compile_rules
from tasks.storage.articles import Changes, article_rows, run_article_stage
from tasks.storage.rules import all_rules

STAGE = stage_named("classify").name
DATA_DIR = Path(__file__).parent / "data"
TOPICS_FILE = DATA_DIR / "topics_lexicon.tsv"
BROAD_TOPICS_FILE = DATA_DIR / "topics_wordnet.tsv"
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
# py3langid walks every byte in Python, so its time is proportional to the sample:
# on the BBC corpus 500 characters give the same language as 1,000 for all 2,225
# articles (lowest confidence 0.99) in half the time.
LANGUAGE_SAMPLE_CHARS = 500
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
# The weight of a term of the broad vocabulary (data/topics_wordnet.tsv, generated from WordNet):
# below the hand-written lexicon's least (1), so it decides only what the lexicon leaves open.
BROAD_TERM_WEIGHT = 0.5
# An article of at least this many words (title and text) always gets its best topic, however
# weak, with its score as the confidence: only shorter or empty ones may have no topic.
MIN_WORDS_FOR_BEST_TOPIC = 5
# When not one term matches such an article, its topic is the commonest of general news, with
# this score: a guess, and the confidence says so.
FALLBACK_TOPIC = "politics"
FALLBACK_SCORE = 0.05

_NOT_LETTERS = re.compile(r"[\W\d_]+")
#: A word, for MIN_WORDS_FOR_BEST_TOPIC: a run of letters.
_WORD = re.compile(r"[^\W\d_]+")


class Match(NamedTuple):
    """One accepted automaton hit: where it starts and ends (exclusive), and what it stands for."""

    start: int
    end: int
    value: Any


# --- loading (once per process) ---------------------------------------------


def load_models() -> float:
    """Load the language model and both automatons now instead of at the first article (a
    worker does before it forks its pool processes, which then share them); return the
    seconds that took, 0 if they were loaded already."""
    started = time.monotonic()
    loaded = _language_identifier.cache_info().currsize
    _language_identifier()
    _topic_automaton()
    _place_automaton()
    return 0.0 if loaded else time.monotonic() - started


@cache
def _language_identifier() -> LanguageIdentifier:
    """py3langid with probabilities, so low confidence can become None.

    Its feature weights ship as float16; an article's score gathers about 300 rows of them,
    and numpy's float16 to float32 conversion of those took 0.06 of the 0.1 ms the score
    took. So the table is converted once, here (57 MB instead of 28, shared by the pool
    processes of a worker, which loads it before forking): the same numbers, the same
    labels and confidences (tests/test_classify.py), 0.07 ms less per article.
    """
    weights, priors, classes, next_move, rows, output = load_model(MODEL_DIR / MODEL_FILE)
    return LanguageIdentifier(np.asarray(weights, dtype=np.float32), np.asarray(priors), classes,
                              next_move, output, norm_probs=True, tk_row=rows)


@cache
def _topic_automaton() -> ahocorasick.Automaton:
    """Lexicon terms -> (length, ((topic, weight, term, is_prefix), ...)): the hand-written
    lexicon, then the broad vocabulary's terms that the lexicon does not have (in any form)."""
    entries: dict[str, list[tuple[str, float, str, bool]]] = defaultdict(list)
    for lineno, cols in _read_tsv(TOPICS_FILE):
        topic, term, weight = cols
        if topic not in TOPICS:
            raise ValueError(f"{TOPICS_FILE.name}:{lineno}: unknown topic {topic!r}")
        key = term.rstrip("*")
        if any(entry[0] == topic for entry in entries[key]):
            raise ValueError(f"{TOPICS_FILE.name}:{lineno}: {term!r} twice under {topic}")
        entries[key].append((topic, float(weight), term, term.endswith("*")))
    written = set(entries)
    for _lineno, (topic, term) in _read_tsv(BROAD_TOPICS_FILE):
        if not {term, term + "s", term.removesuffix("s")} & written:
            entries[term].append((topic, BROAD_TERM_WEIGHT, term, False))
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
            free_from = start - neg_length
            matches.append(Match(start, free_from, value))
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
    for start, _end, entries in _word_matches(
        _topic_automaton(), haystack, _topic_entries_at_boundary
    ):
        hits = TITLE_WEIGHT if start < len(title) else 1.0
        for topic, weight, term, _ in entries:
            counts[topic, term, weight] += hits
    evidence: dict[str, Counter] = defaultdict(Counter)
    for (topic, term, weight), n in counts.items():
        evidence[topic][term] = weight * (1.0 + math.log(n))
    return evidence, len(haystack.split())


def _has_words(text: str, count: int) -> bool:
    """Whether ``text`` has at least ``count`` words (runs of letters); reads only as far as that."""
    return sum(1 for _ in islice(_WORD.finditer(text), count)) == count


def weigh_topics(title: str, text: str) -> list[TopicEvidence]:
    """Every topic with lexicon evidence, strongest first: score, kept or not, and the
    matched terms with the weight each added.

    A topic's evidence is its summed term weights per 100 words, so articles
    of different lengths compare; the score saturates with it. A topic is
    kept if its evidence is a fair share of the best topic's and its score
    reaches an absolute minimum; the best topic of an article of at least
    MIN_WORDS_FOR_BEST_TOPIC words is kept whatever its score (FALLBACK_TOPIC
    when no term matched at all). Each term weight
    is already title-boosted and log-damped (see _topic_evidence).
    """
    evidence, words = _topic_evidence(title, text)
    per_100_words = 100.0 / max(words, MIN_WORDS_FOR_DENSITY)
    density = {topic: sum(terms.values()) * per_100_words for topic, terms in evidence.items()}
    enough_words = _has_words(f"{title}\n{text}", MIN_WORDS_FOR_BEST_TOPIC)
    if not density and enough_words:
        return [TopicEvidence(FALLBACK_TOPIC, FALLBACK_SCORE, True, ())]
    best = max(density.values(), default=0.0)
    weighed = []
    for rank, (topic, value) in enumerate(sorted(density.items(), key=lambda item: (-item[1], item[0]))):
        score = round(1.0 - math.exp(-value / DENSITY_SCALE), 4)
        terms = sorted(((term, round(w, 3)) for term, w in evidence[topic].items()),
                       key=lambda item: (-item[1], item[0]))
        kept = (value >= MIN_SHARE_OF_BEST * best and score >= MIN_TOPIC_SCORE) or (
            rank == 0 and enough_words
        )
        weighed.append(TopicEvidence(topic, score, kept, tuple(terms)))
    return weighed


def score_topics(title: str, text: str) -> tuple[tuple[str, float], ...]:
    """IPTC topics with scores in [0, 1], best first; only those clearly present."""
    return tuple((e.topic, e.score) for e in weigh_topics(title, text) if e.kept)


def find_places(title: str, text: str) -> tuple[str, ...]:
    """ISO 3166-1 alpha-2 codes of the countries mentioned, most mentioned first.

    An all-caps title is skipped ("LET US" is not the United States).
    Ambiguous names ("Georgia") count only if the country is also named
    unambiguously; ties go to the country mentioned first.
    """
    return tuple(explain_places(title, text))


def explain_places(title: str, text: str) -> dict[str, dict[str, int]]:
    """Per country found (in ``find_places`` order), the names that counted for it and how often."""
    haystack = f"{'' if title.isupper() else title}\n{text}"
    names: dict[str, Counter[str]] = defaultdict(Counter)
    ambiguous: dict[str, Counter[str]] = defaultdict(Counter)
    first_seen: dict[str, int] = {}
    for start, end, (code, is_ambiguous) in _word_matches(
        _place_automaton(), haystack, _place_at_boundary
    ):
        if code == "-":
            continue
        (ambiguous if is_ambiguous else names)[code][haystack[start:end]] += 1
        first_seen.setdefault(code, start)
    for code, counted in ambiguous.items():
        if code in names:
            names[code].update(counted)
    order = sorted(names, key=lambda code: (-names[code].total(), first_seen[code]))
    return {code: dict(names[code].most_common()) for code in order}


@dataclass(frozen=True)
class ClassifySetup:
    """What the operator configured, read once per batch: the active model and the rules."""

    model: TopicModel | None = None
    rules: tuple[CompiledRule, ...] = ()


def load_setup(session: Session) -> ClassifySetup:
    return ClassifySetup(model=active_model(session), rules=compile_rules(all_rules(session)))


def classify_article(title: str, text: str, model: TopicModel | None = None) -> Classification:
    """Language, topics and places of one article (title and plain text).

    Topics come from ``model`` when given (it replaces the lexicon), else from the lexicon.
    """
    title, text = title or "", text or ""
    return Classification(
        language=detect_language(title, text),
        topics=model.score(title, text) if model else score_topics(title, text),
        places=find_places(title, text),
    )


#: What classify reads of an article: the clean fields its labels and the rules look at.
CLASSIFY_COLUMNS = (Article.feed_id, Article.title, Article.text, Article.author, Article.url, Article.link,
                    Article.raw_tags, Article.updated_at)


def rule_fields(article: Any) -> dict[str, str]:
    """The fields rules search, from the clean article (an Article or a row of ``CLASSIFY_COLUMNS``)."""
    return {
        "title": article.title or "",
        "text": article.text or "",
        "author": article.author or "",
        "url": article.url or article.link or "",
    }


def apply_article_rules(setup: ClassifySetup, article: Any) -> RuleOutcome:
    return apply_rules(setup.rules, article.feed_id, rule_fields(article), article.raw_tags or ())


def classify_changes(setup: ClassifySetup, article: Any) -> Changes:
    """What classify writes onto one article: its labels, and what the rules decided."""
    outcome = apply_article_rules(setup, article)
    result = classify_article(article.title or "", article.text or "", setup.model)
    return {
        "language": result.language,
        "topics": [[label, score] for label, score in result.topics],
        "places": list(result.places),
        "classifier_version": setup.model.version if setup.model else None,
        "tags": list(outcome.tags),
        "dropped_by": outcome.dropped_by,
    }


class ClassifyBatch:
    """One batch's labels, computed before the writing transaction (``decided``: article id ->
    its ``updated_at`` then, and its columns); an article written since is labelled again."""

    #: What the writing transaction reads of each article.
    columns = (Article.updated_at,)

    def __init__(self, setup: ClassifySetup, decided: dict[int, tuple[datetime, Changes]]) -> None:
        self.setup = setup
        self.decided = decided
        self.reread: dict[int, Row[Any]] = {}

    def prepare(self, session: Session, rows: Sequence[Row[Any]]) -> None:
        stale = [row.id for row in rows if (ahead := self.decided.get(row.id)) is None or ahead[0] != row.updated_at]
        if stale:
            for article in article_rows(session, stale, CLASSIFY_COLUMNS):
                self.reread[article.id] = article

    def decide(self, row: Row[Any]) -> Changes:
        if row.id in self.reread:
            return classify_changes(self.setup, self.reread[row.id])
        return self.decided[row.id][1]


def explain_article(setup: ClassifySetup, article: Article) -> dict[str, Any]:
    """Why the current classifier and rules label ``article`` as they do (``feedmill explain``)."""
    title, text = article.title or "", article.text or ""
    result = classify_article(title, text, setup.model)
    weighed = setup.model.weigh(title, text) if setup.model else weigh_topics(title, text)
    outcome = apply_article_rules(setup, article)
    by_id = {rule.id: rule for rule in setup.rules}
    if setup.model:
        classifier = {"kind": "model", "version": setup.model.version, "labels": list(setup.model.labels)}
    else:
        classifier = {"kind": "lexicon", "version": None, "labels": list(TOPICS)}
    return {
        "classifier": classifier,
        "language": result.language,
        "topics": [
            {"topic": e.topic, "score": e.score, "kept": e.kept, "terms": [list(t) for t in e.terms]}
            for e in weighed
            if e.terms or e.kept
        ],
        "places": [{"code": code, "names": names} for code, names in explain_places(title, text).items()],
        "rules": [
            {"id": rule_id, "action": by_id[rule_id].action, "tag": by_id[rule_id].tag,
             "global": by_id[rule_id].feed_id is None, "rule": by_id[rule_id].describe()}
            for rule_id in outcome.matched
        ],
        "tags": list(outcome.tags),
        "dropped_by": outcome.dropped_by,
    }


def run_classify(settings: Settings, article_ids: Sequence[int]) -> list[int]:
    """Classify a batch; return the ids ready for the next stage. The labels are computed between two transactions, not inside the
    writing one: on SQLite every transaction holds the one write lock, and other workers
    would wait on it while this one runs the language model and the automatons."""
    with session_scope(settings, read_only=True) as session:
        setup = load_setup(session)
        rows = article_rows(session, article_ids, CLASSIFY_COLUMNS, waiting_for=STAGE)
    decided = {}
    for row in rows:
        try:
            decided[row.id] = (row.updated_at, classify_changes(setup, row))
        except Exception:  # labelled again, and its error recorded, by the stage
            continue
    batch = ClassifyBatch(setup, decided)
    return run_article_stage(settings, STAGE, article_ids, batch.columns, batch.decide, prepare=batch.prepare)


@shared_task(base=StageTask, name="feedmill.classify")
def classify_task(message: dict) -> None:
    hand_on_articles(STAGE, run_classify(current_settings(), ArticleBatch.from_message(message).article_ids))
