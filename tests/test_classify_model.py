"""Operators' own topic models: labelled data, training, evaluation, storage, worker loading."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from schemas.db import session_scope
from schemas.models import ClassifierModel
from schemas.settings import Settings
from tasks import classify_model
from tasks.classify import classify_article, load_setup
from tasks.classify_model import (
    LabelledDataError,
    TopicModel,
    active_model,
    cross_validate,
    evaluate,
    read_labelled,
    save_model,
    split_holdout,
    train,
)
from tasks.storage.classifier_models import set_active
from tests.conftest import feedmill

# A small labelled set of the project's own: three labels that are not IPTC topics.
LABELLED = {
    "markets": [
        ("Shares fall as bank profits slide", "Stock markets fell after the bank reported lower quarterly profits and investors sold shares."),
        ("Oil price rises", "The price of crude oil rose on the commodity markets as traders bought futures."),
        ("Central bank holds interest rates", "The central bank kept interest rates unchanged, and bond yields and the currency barely moved."),
        ("Retailer's shares jump", "Shares in the retailer jumped after sales and profits beat forecasts; investors cheered the dividend."),
        ("Markets rally on inflation data", "Stocks rallied and bond prices rose after inflation slowed, traders said."),
        ("Currency slides against the dollar", "The currency fell to a record low against the dollar as investors sold bonds."),
        ("Merger lifts shares", "Shares rose after the two companies agreed a merger worth billions, bankers said."),
        ("Profit warning hits stock", "The stock fell sharply after a profit warning; analysts cut their forecasts for earnings."),
    ],
    "football": [
        ("Late goal wins the derby", "A header in stoppage time won the derby for the home side; the striker scored his tenth goal."),
        ("Manager sacked after defeat", "The club sacked its manager after a fifth league defeat; the players and fans were stunned."),
        ("Goalkeeper saves penalty", "The goalkeeper saved a penalty and the defence held on for a clean sheet in the cup tie."),
        ("Striker signs for record fee", "The striker signed a five-year contract after the club agreed a record transfer fee."),
        ("Cup final goes to penalties", "The final ended goalless after extra time and was settled by a penalty shootout."),
        ("Midfielder injured before match", "The midfielder will miss the match with a hamstring injury, the coach said before kick-off."),
        ("League leaders drop points", "The league leaders drew at home; their striker missed chances and the goalkeeper made saves."),
        ("Fans celebrate promotion", "Supporters invaded the pitch after the team won promotion with a goal in the last minute."),
    ],
    "cooking": [
        ("A quick tomato soup", "Fry the onion in butter, add tomatoes and stock, simmer for twenty minutes and blend."),
        ("Perfect roast chicken", "Season the chicken with salt and lemon, roast in a hot oven and rest before carving."),
        ("Chocolate cake recipe", "Whisk eggs and sugar, fold in flour and cocoa, bake for thirty minutes and cool on a rack."),
        ("Fresh pasta at home", "Knead flour and eggs into a dough, rest it, roll it thin and cut ribbons of pasta."),
        ("Summer salad", "Toss tomatoes, cucumber and herbs with olive oil and vinegar; season with salt and pepper."),
        ("Baking bread", "Mix flour, yeast, water and salt, knead the dough, let it rise and bake until golden."),
        ("Slow-cooked stew", "Brown the beef, add onions, carrots and wine, then simmer the stew gently for three hours."),
        ("Pancakes for breakfast", "Whisk flour, milk and eggs into a batter and fry thin pancakes in a hot buttered pan."),
    ],
}


def write_labelled_csv(path: Path) -> Path:
    """The labelled set above as a CSV with title, text and label columns."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["title", "text", "label"])
        for label, rows in LABELLED.items():
            for title, text in rows:
                writer.writerow([title, text, label])
    return path


def write_labelled_dir(path: Path) -> Path:
    """The labelled set as LABEL/*.txt files, first line the title (like the BBC corpus)."""
    for label, rows in LABELLED.items():
        (path / label).mkdir(parents=True)
        for i, (title, text) in enumerate(rows):
            (path / label / f"{i:03}.txt").write_text(f"{title}\n\n{text}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> TopicModel:
    return train(read_labelled(write_labelled_csv(tmp_path_factory.mktemp("data") / "labelled.csv")))


# --- labelled data ------------------------------------------------------------


def test_csv_and_directory_read_the_same_examples(tmp_path):
    from_csv = read_labelled(write_labelled_csv(tmp_path / "labelled.csv"))
    from_dir = read_labelled(write_labelled_dir(tmp_path / "dir"))
    assert len(from_csv) == 24
    assert sorted(from_csv, key=repr) == sorted(from_dir, key=repr)
    assert from_csv[0].title == "Shares fall as bank profits slide" and from_csv[0].label == "markets"


def test_csv_title_column_is_optional(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("label,text\nspam,buy now cheap pills\nham,see you at lunch tomorrow\n")
    examples = read_labelled(path)
    assert [(e.title, e.label) for e in examples] == [("", "spam"), ("", "ham")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("title,body\na,b\n", "needs 'text' and 'label' columns"),
        ("text,label\nsome text,\n", ":2: empty label"),
        ("text,label\none,a\ntwo,a\n", "at least two labels"),
    ],
)
def test_bad_labelled_csv_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(LabelledDataError, match=message):
        read_labelled(path)


# --- training and evaluation -----------------------------------------------------


def test_trained_model_labels_new_text(model):
    assert model.labels == ("cooking", "football", "markets")
    topics = model.score("Bank shares tumble", "Investors sold shares and the stock market fell as profits slid.")
    assert topics[0][0] == "markets" and 0.25 <= topics[0][1] <= 1.0
    assert [score for _, score in topics] == sorted((score for _, score in topics), reverse=True)
    assert classify_article("Knead the dough", "Add flour and yeast, knead and bake the bread.", model).topics[0][0] == "cooking"


def test_explanation_names_the_words_behind_a_label(model):
    weighed = model.weigh("Penalty drama", "The goalkeeper saved a penalty and the striker scored a goal.")
    assert weighed[0].topic == "football" and weighed[0].kept
    words = dict(weighed[0].terms)
    assert {"goalkeeper", "penalty", "goal"} & set(words) and all(w > 0 for w in words.values())
    assert len(weighed) == 3 and not weighed[-1].kept


def test_two_label_models_explain_both_labels(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("label,text\nspam,buy cheap pills now\nspam,cheap pills buy\nham,lunch tomorrow at noon\nham,see you at lunch\n")
    two = train(read_labelled(path))
    assert dict(two.weigh("", "cheap pills")[0].terms) and two.weigh("", "cheap pills")[0].topic == "spam"
    assert two.weigh("", "lunch at noon")[0].topic == "ham" and two.weigh("", "lunch at noon")[0].terms


def test_evaluate_reports_accuracy_precision_recall_and_confusion(model):
    examples = [classify_model.Example("", text, label) for label, text in [
        ("markets", "Shares and bonds fell as investors sold stocks."),
        ("football", "The striker scored a goal and the goalkeeper saved a penalty."),
        ("cooking", "Simmer the onion and tomatoes, then bake the bread in the oven."),
        ("cooking", "The striker scored a late goal in the cup final."),  # mislabelled on purpose
    ]]
    report = evaluate(model, examples)
    assert report.accuracy == 0.75 and report.examples == 4
    assert report.labels == ["cooking", "football", "markets"]
    assert report.recall["cooking"] == 0.5 and report.precision["football"] == 0.5
    assert report.confusion == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    text = report.text()
    assert "accuracy 0.7500" in text and "precision" in text and "confusion" in text


def test_cross_validation_keeps_exact_duplicates_in_one_fold(tmp_path):
    examples = read_labelled(write_labelled_csv(tmp_path / "labelled.csv"))
    doubled = examples + examples  # every text twice: a leak if copies straddled folds
    folds = classify_model._grouped_folds(doubled, 4, seed=0)
    groups = classify_model.duplicate_groups(doubled)
    for train_idx, test_idx in folds:
        assert not {groups[i] for i in train_idx} & {groups[i] for i in test_idx}
    report = cross_validate(doubled, folds=4)
    assert report.examples == 48 and len(report.fold_accuracies) == 4
    assert report.accuracy >= 0.75


def test_holdout_split_is_stratified(tmp_path):
    examples = read_labelled(write_labelled_csv(tmp_path / "labelled.csv"))
    rest, held_out = split_holdout(examples, 0.25)
    assert len(held_out) == 6 and len(rest) == 18
    assert {e.label for e in held_out} == {"markets", "football", "cooking"}
    with pytest.raises(LabelledDataError):
        split_holdout(examples, 0.9)


# --- storage and workers ----------------------------------------------------------


def test_saved_model_round_trips_and_workers_switch_versions(sqlite_settings: Settings, model):
    with session_scope(sqlite_settings) as session:
        assert active_model(session) is None
        assert load_setup(session).model is None
        first = save_model(session, model, sqlite_settings.home, "fixture", {"examples": 24}, activate=True)
    path = sqlite_settings.home / "models" / f"classifier-v{first}.joblib"
    assert path.is_file() and TopicModel.load(path).labels == model.labels
    with session_scope(sqlite_settings) as session:
        loaded = active_model(session)
        assert loaded.version == first and loaded.labels == model.labels
        assert active_model(session) is loaded  # not loaded again while the version stands
        second = save_model(session, model, sqlite_settings.home, "fixture", {}, activate=True)
    with session_scope(sqlite_settings) as session:
        assert active_model(session).version == second
        assert session.scalars(select(ClassifierModel.id).where(ClassifierModel.active)).all() == [second]
        set_active(session, None)
    with session_scope(sqlite_settings) as session:
        assert active_model(session) is None
        with pytest.raises(LookupError):
            set_active(session, 99)


def test_cli_train_evaluate_list_activate(tmp_path: Path, sqlite_settings: Settings):
    data = write_labelled_csv(tmp_path / "labelled.csv")
    result = feedmill(sqlite_settings, "classifier", "train", str(data), "--holdout", "0.25")
    assert result.returncode == 0, result.stderr
    assert "held-out evaluation (25% of the examples):" in result.stdout
    assert "saved model version 1 to" in result.stdout and "active" in result.stdout
    assert "read 24 example(s) of 3 label(s)" in result.stderr

    evaluated = json.loads(feedmill(sqlite_settings, "classifier", "evaluate", str(data), "--json").stdout)
    assert evaluated["accuracy"] == 1.0 and evaluated["labels"] == ["cooking", "football", "markets"]
    by_file = feedmill(sqlite_settings, "classifier", "evaluate", str(data),
                       "--model", str(sqlite_settings.home / "models" / "classifier-v1.joblib"))
    assert by_file.returncode == 0 and "accuracy 1.0000" in by_file.stdout and "confusion" in by_file.stdout
    folds = feedmill(sqlite_settings, "classifier", "evaluate", str(data), "--folds", "3")
    assert folds.returncode == 0 and "3-fold cross-validation" in folds.stdout and "per fold:" in folds.stdout

    trained = json.loads(feedmill(sqlite_settings, "classifier", "train", str(data), "--no-activate", "--json").stdout)
    assert trained["version"] == 2 and not trained["active"]
    listed = json.loads(feedmill(sqlite_settings, "classifier", "list", "--json").stdout)
    assert [(m["version"], m["active"]) for m in listed] == [(1, True), (2, False)]
    assert listed[0]["examples"] == 24 and listed[0]["holdout_accuracy"] is not None
    assert feedmill(sqlite_settings, "classifier", "activate", "2").returncode == 0
    assert "v2" in feedmill(sqlite_settings, "classifier", "list").stdout.split("*")[1]
    assert "default lexicon" in feedmill(sqlite_settings, "classifier", "deactivate").stdout

    missing = feedmill(sqlite_settings, "classifier", "activate", "9")
    assert missing.returncode == 1 and missing.stderr.strip() == "feedmill: error: no classifier model version 9"
    no_model = feedmill(sqlite_settings, "classifier", "evaluate", str(data))
    assert no_model.returncode == 1 and "no active model" in no_model.stderr
    bad = feedmill(sqlite_settings, "classifier", "train", str(tmp_path / "nope.csv"))
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) <= 3
