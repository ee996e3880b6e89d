"""The broad topic vocabulary (tasks/data/topics_wordnet.tsv) is what scripts/topics_from_wordnet.py writes.

WordNet 3.0 comes from Debian's wordnet-base (.ci/run installs it); without it the test
skips, except in CI, where it fails.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from scripts.topics_from_wordnet import main
from tasks.classify import BROAD_TOPICS_FILE
from tests.conftest import IN_CI

WORDNET = Path("/usr/share/wordnet")


def test_checked_in_vocabulary_is_the_scripts_output():
    if not (WORDNET / "data.noun").is_file():
        if IN_CI:
            pytest.fail(f"{WORDNET} is missing; CI installs wordnet-base")
        pytest.skip(f"{WORDNET} is missing (apt-get install wordnet-base)")
    written = io.StringIO()
    with contextlib.redirect_stdout(written):
        main(["--wordnet", str(WORDNET)])
    assert written.getvalue() == BROAD_TOPICS_FILE.read_text(encoding="utf-8")
    lines = [line.split("\t") for line in written.getvalue().splitlines() if not line.startswith("#")]
    assert len(lines) > 10_000 and all(len(term) >= 4 for _, term in lines)
    assert ["sport", "goalkeeper"] in lines and ["economy_business_finance", "stockholder"] in lines
