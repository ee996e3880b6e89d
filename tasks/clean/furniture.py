"""Learned furniture: the short paragraphs a feed repeats across its articles.

"Listen to this article", "© Example Media", a standing podcast plug: no rule names them, so
they are learned per feed from the fingerprints of its recent articles' short paragraphs (the
stage loads and stores those through ``tasks.storage.furniture``). Pure functions.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Collection, Sequence

from tasks.clean.text import Block, match_key

# podcast plug) is a short paragraph that recurs across its articles. The rule
# (docs/clean.md): a paragraph of at most FURNITURE_MAX_CHARS is furniture when
# its fingerprint is in at least max(FURNITURE_MIN_ARTICLES, FURNITURE_SHARE * w)
# of w articles: the feed's FURNITURE_WINDOW most recent other cleaned articles
# plus the batch being cleaned.
FURNITURE_MAX_CHARS = 400
FURNITURE_WINDOW = 50
FURNITURE_MIN_ARTICLES = 3
FURNITURE_SHARE = 0.3


def paragraph_fingerprint(text: str) -> int | None:
    """63-bit hash of a short paragraph's letters and digits; None for long or empty ones."""
    if len(text) > FURNITURE_MAX_CHARS:
        return None
    key = match_key(text)
    if not key:
        return None
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def paragraph_fingerprints(blocks: Sequence[Block]) -> list[int]:
    """The distinct fingerprints of an article's short paragraphs, sorted."""
    return sorted({fp for block in blocks if (fp := paragraph_fingerprint(block.text)) is not None})


def learn_furniture(articles: Sequence[Collection[int]]) -> frozenset[int]:
    """Fingerprints present in enough of these articles (each a fingerprint set) to be furniture."""
    counts = Counter(fp for fingerprints in articles for fp in set(fingerprints))
    needed = max(FURNITURE_MIN_ARTICLES, math.ceil(FURNITURE_SHARE * len(articles)))
    return frozenset(fp for fp, count in counts.items() if count >= needed)


def remove_furniture(blocks: list[Block], furniture: Collection[int]) -> list[Block]:
    if not furniture:
        return blocks
    return [block for block in blocks if paragraph_fingerprint(block.text) not in furniture]

