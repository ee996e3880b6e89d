"""benchmarks/classify_news.py's parts: the section of an address as the class, AG News rows, the scoring."""

from __future__ import annotations

from pathlib import Path

from benchmarks.classify_news import ag_news, figures, predicted_class, section_class
from tasks.classify_model import Example


def test_the_section_in_an_address_is_the_class():
    assert section_class("http://tass.com/sport/930101") == "sports"
    assert section_class("http://tass.com/economy/930102") == "business"
    assert section_class("http://abcnews.go.com/International/wireStory/x-45310062") == "world"
    assert section_class("http://www.bbc.co.uk/news/world-europe-38912345") == "world"
    assert section_class("http://www.bbc.co.uk/news/technology-38912345") == "sci/tech"
    assert section_class("http://www.bbc.co.uk/news/uk-england-38912345") is None  # no class of the four
    assert section_class("http://www.huffingtonpost.com/2017/02/07/x") is None
    assert section_class("") is None


def test_ag_news_rows(tmp_path: Path):
    path = tmp_path / "test.csv"
    path.write_text('"2","Striker scores late goal","The striker scored in stoppage time."\n'
                    '"3","Shares fall","Shares fell on Wall Street\\\\as investors sold."\n', encoding="utf-8")
    assert ag_news(path) == [
        Example("Striker scores late goal", "The striker scored in stoppage time.", "sports"),
        Example("Shares fall", "Shares fell on Wall Street as investors sold.", "business"),
    ]


def test_figures_count_a_topic_of_the_class_as_right():
    assert predicted_class("conflict_war_peace") == "world" and predicted_class("labour") == "business"
    assert predicted_class("arts_culture_entertainment") == "(other)"
    result = figures([
        Example("Striker scores late goal in the cup final", "The goalkeeper saved a penalty.", "sports"),
        Example("Shares fall on Wall Street", "Investors sold shares as the central bank raised interest rates.",
                "business"),
        Example("Rebels shell the capital", "Troops and militia fought for the city overnight.", "sci/tech"),
    ])
    assert result["items"] == 3 and result["accuracy"] == round(2 / 3, 4) and result["no_topic"] == 0
    assert result["balanced_accuracy"] == round((1 + 1 + 0) / 3, 4)
    assert sum(band["articles"] for band in result["calibration"]) == 3
