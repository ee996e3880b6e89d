"""Write tasks/data/topics_wordnet.tsv, the classifier's broad vocabulary, from WordNet 3.0.

    apt-get install wordnet-base      # Debian's package of Princeton WordNet 3.0
    .venv/bin/python scripts/topics_from_wordnet.py [--wordnet /usr/share/wordnet] > tasks/data/topics_wordnet.tsv

Run by a developer when the seeds change; the output is checked in, so nothing is
downloaded or needed at run time. For each IPTC topic below, a few WordNet synsets
are the seeds; a topic's synsets are the seeds, all their hyponyms (instances too)
and the words WordNet files under a seed as their topic domain ("-c" pointers).
A word is written under a topic when its most frequent sense (WordNet's first) is
one of that topic's synsets, it is not used more often as another part of speech
(WordNet's sense-tagged counts: "let" is mostly a verb) and it belongs to no other
topic: "bank" as the river bank is its less common sense. tasks/classify.py skips a
term that the hand-written lexicon already has, and gives these terms a low weight.

WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Used under
the WordNet 3.0 license (docs/classification.md).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}

#: IPTC topic -> WordNet 3.0 noun synset offsets (the synset's first words in the comment).
SEEDS: dict[str, tuple[str, ...]] = {
    "sport": (
        "09820263",  # athlete
        "00523513",  # sport, athletics
        "00433216",  # sport (occupation of athletes)
        "09613191",  # contestant
        "08208560",  # team, squad
        "00455599",  # game (a contest with rules)
        "00471613", "00468480", "00464894", "00469651",  # baseball, football, golf, american football
        "00480993", "00482298", "00445802", "00476389",  # basketball, tennis, boxing, cricket
        "00478262", "00463543",  # soccer, ice hockey
    ),
    "economy_business_finance": (
        "08058098",  # company
        "08061042",  # business, concern
        "01094725",  # commercial enterprise
        "08059412",  # corporation
        "13384557",  # money
        "13385913",  # currency
        "13333833",  # stock
        "01098698",  # finance
        "01097292",  # market, marketplace
        "08072837",  # market, securities industry
        "08420278",  # bank (depository financial institution)
        "01091905",  # trade
        "06149484",  # economics
        "01090446",  # commerce
        "04323026",  # stock exchange
        "13308999",  # tax
        "09882007",  # businessman
        "08054721",  # financial institution
        "10216106",  # investor
    ),
    "science_technology": (
        "03082979",  # computer
        "06566077",  # software
        "10560637",  # scientist
        "05999797",  # science, scientific discipline
        "06271778", "06128307",  # telecommunication
        "03580615",  # internet
        "06128570",  # computer science
        "06084469", "06037666", "06090869", "06095022",  # chemistry, biology, physics, astronomy
        "06075527", "06099269",  # genetics, electronics
    ),
    "politics": (
        "10451263", "10450303",  # politician
        "08050678",  # government, authorities
        "00181781",  # election
        "08163273",  # legislature
        "06148148",  # politics, political science
        "01124794",  # government, governance
        "00611972", "01124508",  # politics
        "10013927",  # diplomat
        "07148573",  # diplomacy
        "06773434",  # treaty
        "10164747",  # head of state
        "08256968",  # political party
    ),
    "conflict_war_peace": (
        "00973077",  # war, warfare
        "08199025",  # military, armed forces
        "04565375",  # weapon
        "10622053",  # soldier
        "00759694",  # terrorism
    ),
    "crime_law_justice": (
        "00766234",  # crime
        "08441203",  # law, jurisprudence
    ),
    "health": (
        "14070360",  # disease
        "14061805",  # illness
        "03247620",  # drug
        "03740161",  # medicine, medication
        "06043075", "00612160",  # medicine
        "03540595", "08054417",  # hospital
    ),
    "arts_culture_entertainment": (
        "06613686", "06262567",  # movie, film
        "07020895", "00543233",  # music
        "09765278",  # actor
        "10340312", "10339966",  # musician
        "02743547", "00933420",  # art
        "06157326",  # performing arts
    ),
}

#: Shorter words are mostly abbreviations ("rom", "tat") and would match inside many others.
MIN_LETTERS = 4
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective markers such as "(a)"


def read_synsets(folder: Path) -> dict[tuple[str, str], tuple[list[str], list[tuple[str, str, str]]]]:
    """(pos, offset) -> (words, pointers as (symbol, offset, pos))."""
    synsets = {}
    for pos in "nvar":
        with (folder / f"data.{POS_FILES[pos]}").open(encoding="latin-1") as lines:
            for line in lines:
                if line.startswith("  "):  # the licence header
                    continue
                fields = line.partition(" | ")[0].split()
                count = int(fields[3], 16)
                words = [_MARKER.sub("", fields[4 + 2 * i]).lower() for i in range(count)]
                at = 4 + 2 * count
                pointers = [
                    (fields[at + 1 + 4 * i], fields[at + 2 + 4 * i], "a" if fields[at + 3 + 4 * i] == "s" else fields[at + 3 + 4 * i])
                    for i in range(int(fields[at]))
                ]
                synsets[pos, fields[0]] = (words, pointers)
    return synsets


def first_senses(folder: Path) -> dict[tuple[str, str], str]:
    """(pos, word) -> the offset of its most frequent sense."""
    first = {}
    for pos in "nvar":
        with (folder / f"index.{POS_FILES[pos]}").open(encoding="latin-1") as lines:
            for line in lines:
                if line.startswith("  "):
                    continue
                fields = line.split()
                pointer_count = int(fields[3])
                first[pos, fields[0]] = fields[4 + pointer_count + 2]
    return first


def tagged_counts(folder: Path) -> dict[tuple[str, str], int]:
    """(pos, word) -> how often WordNet's sense-tagged texts used the word in that part of speech."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    with (folder / "cntlist.rev").open(encoding="latin-1") as lines:
        for line in lines:
            sense_key, _number, count = line.split()
            lemma, _, rest = sense_key.partition("%")
            counts["nvara"[int(rest[0]) - 1], lemma] += int(count)  # 1-5: noun, verb, adjective, adverb, satellite
    return counts


def topic_synsets(synsets, seeds: tuple[str, ...]) -> set[tuple[str, str]]:
    """The seeds, their hyponyms and instances (recursively), and the members of their domains."""
    found: set[tuple[str, str]] = set()
    stack = [("n", offset) for offset in seeds]
    while stack:
        key = stack.pop()
        if key in found:
            continue
        found.add(key)
        for symbol, offset, pos in synsets[key][1]:
            if symbol in ("~", "~i"):
                stack.append((pos, offset))
            elif symbol == "-c":
                found.add((pos, offset))
    return found


def terms(folder: Path) -> list[tuple[str, str]]:
    synsets, first, counts = read_synsets(folder), first_senses(folder), tagged_counts(folder)
    owners: dict[str, set[str]] = defaultdict(set)
    for topic, seeds in SEEDS.items():
        for pos, offset in topic_synsets(synsets, seeds):
            for word in synsets[pos, offset][0]:
                mostly_other_pos = any(counts[other, word] > counts[pos, word] for other in "nvar" if other != pos)
                if first.get((pos, word)) == offset and not mostly_other_pos:
                    owners[word.replace("_", " ")].add(topic)
    return sorted(
        (topics.pop(), word) for word, topics in owners.items()
        if len(topics) == 1 and len(word) >= MIN_LETTERS and not any(c.isdigit() for c in word)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"), help="WordNet 3.0's dict folder")
    args = parser.parse_args(argv)
    out = sys.stdout
    out.write("# Broad topic vocabulary for tasks/classify.py, generated by scripts/topics_from_wordnet.py\n")
    out.write("# from WordNet 3.0 (Copyright 2006 by Princeton University; its licence: WORDNET-LICENSE). Do not edit:\n")
    out.write("# change the seeds and regenerate. Columns: topic, term (whole words only).\n")
    for topic, word in terms(args.wordnet):
        out.write(f"{topic}\t{word}\n")


if __name__ == "__main__":
    main()
