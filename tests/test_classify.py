"""The classify stage: language, IPTC topics and places of one article."""

from __future__ import annotations

import re
import socket
import statistics
import time
from pathlib import Path

import pytest

from schemas.payloads import Classification
from tasks import classify
from tasks.classify import (
    BROAD_TERM_WEIGHT,
    FALLBACK_SCORE,
    FALLBACK_TOPIC,
    MIN_TOPIC_SCORE,
    TOPICS,
    classify_article,
    detect_language,
    explain_places,
    find_places,
    score_topics,
    weigh_topics,
)

SEED_ARTICLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "seed-articles.txt"


def load_seed_articles() -> list[tuple[str, str]]:
    """(title, body) of each seed article.

    Each article in the file is: title, a caption block, the title again, the
    caption again, then the body paragraphs; articles are separated by
    several blank lines.
    """
    if not SEED_ARTICLES.exists():
        pytest.skip(f"{SEED_ARTICLES} is not here (shared/ sits beside the repo)")
    articles = []
    for block in re.split(r"\n{3,}", SEED_ARTICLES.read_text(encoding="utf-8")):
        paragraphs = [p.strip() for p in block.split("\n\n") if p.strip()]
        if not paragraphs:
            continue
        title = paragraphs[0]
        second_title = max(i for i, p in enumerate(paragraphs) if p == title)
        body = paragraphs[second_title + 2:]
        articles.append((title, "\n\n".join(body)))
    return articles


@pytest.fixture(scope="module")
def seeds() -> list[tuple[str, str]]:
    articles = load_seed_articles()
    assert len(articles) == 2
    return articles


# --- seed articles -------------------------------------------------------------


def test_seed_iraq_article(seeds):
    title, text = seeds[0]
    assert title.startswith("Pro-Iran Factions")
    result = classify_article(title, text)
    assert result.language == "en"
    assert {label for label, _ in result.topics[:2]} == {"conflict_war_peace", "politics"}
    assert {"IQ", "IR", "US"} <= set(result.places)


def test_seed_gaza_article(seeds):
    title, text = seeds[1]
    assert "Gaza" in title
    result = classify_article(title, text)
    assert result.language == "en"
    assert result.topics[0][0] == "conflict_war_peace"
    assert {"PS", "IL", "US", "IR"} <= set(result.places)
    assert result.places[0] == "PS"  # Gaza is mentioned most


# --- topics --------------------------------------------------------------------

TOPIC_FIXTURES = {
    "arts_culture_entertainment": (
        "Veteran director's new film wins top prize at Venice festival",
        "The drama, starring two newcomers, premiered to a standing ovation. "
        "Critics praised the screenplay and the soundtrack, and the actress in "
        "the lead role is already tipped for an Oscar nomination. The film opens "
        "in cinemas next month.",
    ),
    "conflict_war_peace": (
        "Ceasefire collapses as fighting resumes along the front line",
        "Troops exchanged artillery fire overnight and several drone strikes hit "
        "positions held by rebel militias, the army said. Civilians fled the "
        "shelling as mediators tried to revive peace talks between the warring sides.",
    ),
    "crime_law_justice": (
        "Man jailed for 12 years over armed robbery",
        "A 34-year-old man was sentenced at the crown court on Friday after a jury "
        "found him guilty of robbery and possession of a firearm. Prosecutors said "
        "he threatened staff at a jewellery shop. Police arrested him days later.",
    ),
    "disaster_accident": (
        "Earthquake kills dozens as buildings collapse",
        "A magnitude 6.8 earthquake struck before dawn, trapping residents under "
        "rubble. Rescuers worked through the night and the death toll rose to 41. "
        "Aftershocks hampered the rescue effort, and thousands were evacuated.",
    ),
    "economy_business_finance": (
        "Retailer's profits jump as sales beat forecasts",
        "The company reported a 15% rise in quarterly profit on revenue of $4.2bn, "
        "and its shares rose 6% on the stock exchange. The chief executive said "
        "investors could expect a higher dividend despite inflation and weak consumer demand.",
    ),
    "education": (
        "Teachers warn over new school curriculum",
        "Head teachers say pupils in primary schools will face more exams under "
        "the new curriculum. The education secretary said classroom time for reading "
        "and maths would rise, while universities welcomed the changes.",
    ),
    "environment": (
        "Carbon emissions hit record despite climate pledges",
        "Global greenhouse gas emissions rose again last year, scientists said, "
        "putting the Paris Agreement goals at risk. Campaigners called for a faster "
        "switch from fossil fuels to renewable energy and an end to deforestation.",
    ),
    "health": (
        "Hospitals prepare for winter flu surge",
        "Doctors and nurses are bracing for a rise in patients with flu and other "
        "respiratory infections. Health officials urged older people to get vaccinated, "
        "saying the vaccine cuts the risk of serious illness.",
    ),
    "human_interest": (
        "Grandmother celebrates 105th birthday with her dog",
        "Family, neighbours and her beloved dog Max joined the celebration in her "
        "village on Sunday. The 105-year-old said the secret to a long life was "
        "kindness, a daily walk and a good sense of humour. Her grandchildren baked "
        "a cake for the party.",
    ),
    "labour": (
        "Rail workers vote to strike over pay",
        "Members of the trade union backed industrial action after talks with "
        "employers broke down. The union said wages had fallen behind inflation and "
        "staff shortages meant longer working hours. A walkout is planned for next month.",
    ),
    "lifestyle_leisure": (
        "Five easy recipes for a summer picnic",
        "From a zesty salad to a chocolate dessert, these dishes are quick to cook "
        "and easy to carry. Our chef shares tips on fresh ingredients, the best "
        "wine to bring and how to keep food cool on a hot day at the beach.",
    ),
    "politics": (
        "Prime minister calls snap general election",
        "The prime minister announced the vote after losing a key ballot in "
        "parliament. Opposition parties said they were ready to campaign, and "
        "opinion polls suggest the governing party could lose its majority.",
    ),
    "religion": (
        "Pope leads Easter mass for thousands of pilgrims",
        "Worshippers filled the square as the pope celebrated Easter, the most "
        "important feast of the Christian calendar. In his sermon he called on "
        "believers of all faiths to pray for peace.",
    ),
    "science_technology": (
        "New chip promises faster AI on smartphones",
        "The semiconductor maker unveiled a processor that runs artificial "
        "intelligence software directly on the device, without sending data to the "
        "cloud. Engineers say the technology will also make laptops more efficient.",
    ),
    "society": (
        "Charities warn of rising homelessness",
        "Rough sleeping has doubled in five years as housing costs rise, charities "
        "say. Campaigners called for more social housing and better welfare support "
        "for families living in poverty.",
    ),
    "sport": (
        "Late goal sends United into cup final",
        "A stoppage-time strike from the substitute settled a tense semi-final. "
        "The home side's goalkeeper saved a penalty before half-time, and the "
        "manager praised his players and the fans after the match.",
    ),
    "weather": (
        "Storm to bring heavy rain and gales",
        "Forecasters have issued a yellow warning for wind and rain, with gusts of "
        "up to 70mph expected on the coast. Temperatures will drop to near freezing "
        "overnight, with snow possible on high ground.",
    ),
}


def test_every_topic_has_a_fixture():
    assert set(TOPIC_FIXTURES) == set(TOPICS) and len(TOPICS) == 17


@pytest.mark.parametrize("expected", sorted(TOPIC_FIXTURES))
def test_fixture_top_topic(expected):
    title, text = TOPIC_FIXTURES[expected]
    topics = score_topics(title, text)
    assert topics and topics[0][0] == expected, topics


def test_topic_scores_are_ranked_probabilities():
    for title, text in TOPIC_FIXTURES.values():
        topics = score_topics(title, text)
        scores = [score for _, score in topics]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= score <= 1.0 for score in scores)
        assert all(label in TOPICS for label, _ in topics)


def terms_by_topic(title, text):
    return {e.topic: dict(e.terms) for e in weigh_topics(title, text)}


def test_title_counts_more_than_body():
    body = "The company said the election result had not affected its shares."
    as_title = terms_by_topic("Election", body)["politics"]
    in_body = terms_by_topic("Statement", "Election. " + body)["politics"]
    assert as_title["election*"] > in_body["election*"]


def test_words_match_on_boundaries_and_prefixes():
    explained = terms_by_topic("", "The software award went to a warm welcome; vaccinations resumed.")
    assert "conflict_war_peace" not in explained  # "war" inside software/award/warm
    assert explained["health"]["vaccin*"] == 3.0


def test_phrase_hides_its_words():
    explained = terms_by_topic("", "He scored twice in the Premier League.")
    assert "premier league" in explained["sport"]
    assert "politics" not in explained  # "premier" is part of the phrase


def test_weighed_topics_match_scores(seeds):
    title, text = seeds[0]
    weighed = weigh_topics(title, text)
    assert [(e.topic, e.score) for e in weighed if e.kept] == list(score_topics(title, text))
    assert [e.score for e in weighed] == sorted((e.score for e in weighed), reverse=True)
    terms = dict(weighed[0].terms)
    assert weighed[0].topic == "conflict_war_peace"
    assert terms["militia*"] > 0 and all(w > 0 for w in terms.values())
    assert any(not e.kept for e in weighed)  # topics only touched on are shown, not kept


def test_no_topic_only_for_empty_or_short_text():
    assert score_topics("", "") == ()
    assert score_topics("Untitled", "Lorem ipsum.") == ()  # three words
    assert [topic for topic, _ in score_topics("Oscar", "")] == ["arts_culture_entertainment"]  # a term, however short
    assert score_topics("!!!", "?? ## -- 12 34 ...") == ()  # words have letters


def test_five_words_or_more_always_get_their_best_topic():
    # Weak evidence: below MIN_TOPIC_SCORE, yet the best topic is given, with its score.
    weak = weigh_topics("Update", "Our company said nothing else about it on Tuesday.")
    assert weak[0].score < MIN_TOPIC_SCORE and weak[0].kept
    assert score_topics("Update", "Our company said nothing else about it on Tuesday.") == (
        (weak[0].topic, weak[0].score),)
    # Not one term: the fallback topic, with a score that says it is a guess.
    assert score_topics("Untitled", "Lorem ipsum dolor sit amet, consectetur adipiscing elit.") == (
        (FALLBACK_TOPIC, FALLBACK_SCORE),)


def test_broad_vocabulary_adds_words_the_lexicon_lacks_at_a_low_weight():
    explained = terms_by_topic("New release", "She recorded a new sonata for the piano on Friday.")
    assert explained["arts_culture_entertainment"]["sonata"] == BROAD_TERM_WEIGHT  # WordNet's
    assert explained["arts_culture_entertainment"]["piano*"] == 1.5  # the lexicon's
    # A word the lexicon has keeps the lexicon's weight and topic only.
    assert terms_by_topic("", "The goalkeeper saved it.")["sport"] == {"goalkeeper*": 3.0}


# --- places --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wildfires spread across New Mexico on Tuesday.", ("US",)),
        ("Officials in Mexico City and Tijuana met on Tuesday.", ("MX",)),
        ("We had a turkey dinner with the whole family.", ()),
        ("Turkey and Greece held talks in Ankara.", ("TR", "GR")),
        ("Talks in Washington ended without a deal.", ("US",)),
        ("The Washington Post reported the leak first.", ()),
        ("The U.S. and the UK signed the accord; Americans and Britons welcomed it.", ("US", "GB")),
        ("Oil prices rose in Latin America.", ()),
        ("Papua New Guinea and Guinea-Bissau both voted.", ("PG", "GW")),
        ("South Sudan and Sudan reopened the border.", ("SS", "SD")),
        ("North Korea fired a missile, South Korea said.", ("KP", "KR")),
        ("Iraqis and Iranians marched in Baghdad.", ("IQ", "IR")),
        ("Flooding hit Côte d\u2019Ivoire and Abidjan.", ("CI",)),
        ("Let us go to the fair, he told us.", ()),
    ],
)
def test_place_disambiguation(text, expected):
    assert find_places("", text) == expected


def test_ambiguous_georgia_needs_a_second_cue():
    assert find_places("", "Voters in Georgia went to the polls.") == ()
    assert find_places("", "Protesters in Georgia marched on parliament in Tbilisi.") == ("GE",)


def test_explain_places_names_what_counted():
    explained = explain_places("", "Iraqis marched in Baghdad; in Baghdad, Georgia voted.")
    assert explained == {"IQ": {"Baghdad": 2, "Iraqis": 1}}  # Georgia alone is ambiguous


def test_places_most_mentioned_first():
    text = "France and Germany met. Paris, Berlin and Munich hosted; the German side agreed."
    assert find_places("", text) == ("DE", "FR")


def test_all_caps_title_is_not_read_for_places():
    assert find_places("LET US PRAY", "") == ()
    assert find_places("Strikes on US bases", "") == ("US",)


def test_gazetteer_codes_cover_all_countries():
    codes = {code for _, (_, (code, _)) in classify._place_automaton().items()} - {"-"}
    assert len(codes) >= 196  # 193 UN members, Palestine, the Holy See, Kosovo
    assert all(re.fullmatch(r"[A-Z]{2}", code) for code in codes)


# --- language ------------------------------------------------------------------


def test_language_french_and_german():
    french = (
        "Le gouvernement a présenté mercredi un projet de loi sur les retraites. "
        "Les syndicats appellent à une grève nationale la semaine prochaine."
    )
    german = (
        "Die Bundesregierung hat am Mittwoch neue Maßnahmen gegen die hohen "
        "Energiepreise beschlossen. Die Opposition kritisierte den Plan als zu spät."
    )
    assert detect_language("Réforme des retraites", french) == "fr"
    assert detect_language("Energiepreise", german) == "de"


def test_language_none_when_too_short():
    assert detect_language("Hi", "ok") is None
    assert detect_language("", "1234 5678 — !!! ???") is None


def test_language_model_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the classify stage must not use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    classify._language_identifier.cache_clear()
    try:
        assert detect_language("Weather", "Heavy rain is expected across the region tomorrow.") == "en"
    finally:
        classify._language_identifier.cache_clear()


#: One short paragraph per script and several Latin-script languages, for the model equivalence test.
LANGUAGE_SAMPLES = {
    "en": "The council approved the new budget on Tuesday after a long debate about schools and roads.",
    "fr": "Le conseil municipal a approuvé mardi le nouveau budget après un long débat sur les écoles.",
    "de": "Der Stadtrat hat am Dienstag nach einer langen Debatte über Schulen den Haushalt beschlossen.",
    "es": "El ayuntamiento aprobó el martes el nuevo presupuesto tras un largo debate sobre las escuelas.",
    "it": "Il consiglio comunale ha approvato martedì il nuovo bilancio dopo un lungo dibattito sulle scuole.",
    "nl": "De gemeenteraad heeft dinsdag na een lang debat over scholen en wegen de nieuwe begroting goedgekeurd.",
    "pt": "A câmara municipal aprovou na terça-feira o novo orçamento depois de um longo debate sobre escolas.",
    "pl": "Rada miasta zatwierdziła we wtorek nowy budżet po długiej debacie na temat szkół i dróg.",
    "ru": "Городской совет во вторник утвердил новый бюджет после долгих споров о школах и дорогах.",
    "el": "Το δημοτικό συμβούλιο ενέκρινε την Τρίτη τον νέο προϋπολογισμό μετά από μακρά συζήτηση.",
    "ar": "وافق المجلس البلدي يوم الثلاثاء على الميزانية الجديدة بعد نقاش طويل حول المدارس والطرق.",
    "hi": "नगर परिषद ने मंगलवार को स्कूलों और सड़कों पर लंबी बहस के बाद नए बजट को मंजूरी दी।",
    "ja": "市議会は火曜日、学校と道路をめぐる長い議論の末に新しい予算を承認した。",
    "zh": "市议会周二在就学校和道路问题进行长时间辩论后批准了新预算。",
    "tr": "Belediye meclisi salı günü okullar ve yollar hakkındaki uzun tartışmanın ardından yeni bütçeyi onayladı.",
}


def stock_language_identifier():
    """py3langid as it ships (float16 weights), for comparison with classify's float32 copy."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def test_language_identifier_scores_exactly_as_shipped_model():
    """classify converts the model's weights to float32 once (a faster score); the labels and
    confidences must be the very ones py3langid's own float16 table gives."""
    stock, ours = stock_language_identifier(), classify._language_identifier()
    assert ours.nb_ptc.dtype.name == "float32" and stock.nb_ptc.dtype.name == "float16"
    for expected, text in LANGUAGE_SAMPLES.items():
        for sample in (text, text[:40], text.upper()):
            assert ours.classify(sample) == stock.classify(sample), sample
        assert detect_language("", text) == expected


# --- robustness and speed ------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "text"),
    [
        ("", ""),
        ("   ", "\n\n\t"),
        ("!!!", "?? ## -- 12 34 ..."),
        ("\x00\x01\x02", "\ufffd\ufffd\ufffd"),
        ("asdfgh qwerty", "zxcvb lkjhg poiuy mnbvc"),
        (None, None),
    ],
)
def test_empty_or_garbage_input(title, text):
    words = len(f"{title or ''} {text or ''}".split())
    # Six "words" of garbage are five words or more: the fallback topic, with its low score.
    topics = ((FALLBACK_TOPIC, FALLBACK_SCORE),) if words >= 5 and title == "asdfgh qwerty" else ()
    assert classify_article(title, text) == Classification(None, topics, ())


def test_data_loads_once():
    classify_article("Warm-up", "Troops entered the city.")
    before = classify._topic_automaton.cache_info().misses
    classify_article("Again", "Police arrested a suspect in Paris.")
    assert classify._topic_automaton.cache_info().misses == before
    assert classify._place_automaton() is classify._place_automaton()


def test_speed_per_article(seeds):
    """Loose guard only: the target is about 1 ms per article on a 5 KB text."""
    title, text = seeds[1]
    classify_article(title, text)
    timings = []
    for _ in range(30):
        start = time.perf_counter()
        classify_article(title, text)
        timings.append(time.perf_counter() - start)
    assert statistics.median(timings) < 0.01
