"""Operators' own topic models: read labelled data, train, evaluate, store, load.

A model is a scikit-learn pipeline, TF-IDF features (sublinear term
frequency, accents folded) into a multinomial logistic regression, trained
on whatever labels the operator gives. Logistic regression gives
probabilities, so an article keeps every label whose probability reaches
``MIN_MODEL_SCORE`` (possibly none); its coefficients say which words
pushed an article towards a label, which is what ``feedmill explain`` shows.

Models are stored as joblib files under ``$FEEDMILL_HOME/models/`` and,
bytes and all, in the ``classifier_models`` table, whose row id is the
version. Workers look up the active version once per batch (one small
query) and load a model only when that version changes, so activating a
model needs no restart. A model file is a pickle: load only your own.

scikit-learn and joblib are imported where they are used: importing them
costs about a second, which every command and worker would otherwise pay
even with no model in use.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session

from schemas.payloads import TopicEvidence
from tasks.storage import classifier_models

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

MODEL_FORMAT = 1
#: A label is given when the model's probability for it reaches this.
MIN_MODEL_SCORE = 0.25
#: Inverse regularisation; chosen by 5-fold cross-validation on the BBC corpus
#: (10, 20 and 50 all land within 0.002 of each other).
REGULARISATION_C = 20.0
#: Words per label that ``explain`` shows.
EXPLAIN_TERMS = 8
MODELS_DIRNAME = "models"


class LabelledDataError(ValueError):
    """Labelled data that cannot be used, with the file and reason."""


@dataclass(frozen=True)
class Example:
    title: str
    text: str
    label: str


def document(title: str, text: str) -> str:
    """What the model reads: the same for training data and for stored articles."""
    return f"{title}\n{text}"


# --- labelled data --------------------------------------------------------------


def read_labelled(path: Path) -> list[Example]:
    """Examples from a CSV (``text`` and ``label`` columns, ``title`` optional) or a
    directory with one subdirectory per label holding ``.txt`` files (first line the title)."""
    if path.is_dir():
        examples = _read_directory(path)
    elif path.is_file():
        examples = _read_csv(path)
    else:
        raise LabelledDataError(f"{path}: no such file or directory")
    labels = {example.label for example in examples}
    if len(labels) < 2:
        raise LabelledDataError(f"{path}: needs examples of at least two labels, found {len(labels)}")
    return examples


def _read_csv(path: Path) -> list[Example]:
    csv.field_size_limit(2**31 - 1)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if not {"text", "label"} <= columns:
            raise LabelledDataError(f"{path}: needs 'text' and 'label' columns, has {sorted(columns)}")
        examples = []
        for row in reader:
            label = (row["label"] or "").strip()
            if not label:
                raise LabelledDataError(f"{path}:{reader.line_num}: empty label")
            examples.append(Example((row.get("title") or "").strip(), (row["text"] or "").strip(), label))
    return examples


def _read_directory(path: Path) -> list[Example]:
    examples = []
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            title, _, text = _decode(file.read_bytes()).strip().partition("\n")
            examples.append(Example(title.strip(), text.strip(), folder.name))
    if not examples:
        raise LabelledDataError(f"{path}: no LABEL/*.txt files")
    return examples


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def duplicate_groups(examples: Sequence[Example]) -> list[str]:
    """One group per exact text, so copies of one text never straddle train and test."""
    return [hashlib.sha256(document(e.title, e.text).encode()).hexdigest() for e in examples]


# --- the model ------------------------------------------------------------------


class TopicModel:
    """A trained pipeline and its version: labels, scores and explains articles."""

    def __init__(self, pipeline: Pipeline, version: int | None = None, sha256: str | None = None) -> None:
        self.pipeline = pipeline
        self.version = version
        self.sha256 = sha256
        self.labels: tuple[str, ...] = tuple(str(label) for label in pipeline.classes_)
        self._terms: np.ndarray | None = None

    def score(self, title: str, text: str) -> tuple[tuple[str, float], ...]:
        """Labels whose probability reaches MIN_MODEL_SCORE, best first."""
        return tuple((e.topic, e.score) for e in self.weigh(title, text, explain=False) if e.kept)

    def predict(self, documents: Sequence[str]) -> list[str]:
        """The most probable label of each document (for evaluation)."""
        return [str(label) for label in self.pipeline.predict(list(documents))]

    def weigh(self, title: str, text: str, explain: bool = True) -> list[TopicEvidence]:
        """Every label with its probability, best first; with ``explain``, the words
        that pushed the article towards it (tf-idf weight times coefficient)."""
        vectorizer, classifier = self.pipeline[0], self.pipeline[-1]
        features = vectorizer.transform([document(title, text)])
        probabilities = classifier.predict_proba(features)[0]
        coefficients = classifier.coef_
        if coefficients.shape[0] == 1:  # two labels: one row, for the second
            coefficients = np.vstack([-coefficients[0], coefficients[0]])
        row = features.tocsr()
        evidence = []
        for index in np.argsort(-probabilities, kind="stable"):
            score = round(float(probabilities[index]), 4)
            terms: tuple[tuple[str, float], ...] = ()
            if explain:
                contributions = row.data * coefficients[index, row.indices]
                top = np.argsort(-contributions, kind="stable")[:EXPLAIN_TERMS]
                names = self._term_names()
                terms = tuple(
                    (str(names[row.indices[i]]), round(float(contributions[i]), 3))
                    for i in top
                    if contributions[i] > 0
                )
            evidence.append(TopicEvidence(self.labels[index], score, score >= MIN_MODEL_SCORE, terms))
        return evidence

    def _term_names(self) -> np.ndarray:
        if self._terms is None:
            self._terms = self.pipeline[0].get_feature_names_out()
        return self._terms

    def to_bytes(self) -> bytes:
        import joblib
        import sklearn

        buffer = io.BytesIO()
        payload = {"format": MODEL_FORMAT, "sklearn": sklearn.__version__, "pipeline": self.pipeline}
        joblib.dump(payload, buffer, compress=3)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, version: int | None = None) -> TopicModel:
        import joblib
        import sklearn

        payload = joblib.load(io.BytesIO(data))
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            raise ValueError("not a feedmill classifier model file")
        if payload["sklearn"] != sklearn.__version__:
            log.warning("model trained with scikit-learn %s, running %s", payload["sklearn"], sklearn.__version__)
        return cls(payload["pipeline"], version, hashlib.sha256(data).hexdigest())

    @classmethod
    def load(cls, path: Path) -> TopicModel:
        return cls.from_bytes(path.read_bytes())


def train(examples: Sequence[Example]) -> TopicModel:
    """Fit TF-IDF and logistic regression on the examples."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline(
        [
            ("tfidf", TfidfVectorizer(sublinear_tf=True, strip_accents="unicode")),
            ("logreg", LogisticRegression(C=REGULARISATION_C, max_iter=2000)),
        ]
    )
    pipeline.fit([document(e.title, e.text) for e in examples], [e.label for e in examples])
    return TopicModel(pipeline)


# --- evaluation -----------------------------------------------------------------


@dataclass
class Report:
    """Accuracy, per-label precision and recall, and the confusion matrix (rows: true label)."""

    labels: list[str]
    accuracy: float
    examples: int
    precision: dict[str, float]
    recall: dict[str, float]
    f1: dict[str, float]
    support: dict[str, int]
    confusion: list[list[int]]
    fold_accuracies: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, truth: Sequence[str], predicted: Sequence[str]) -> Report:
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

        labels = sorted(set(truth) | set(predicted))
        precision, recall, f1, support = precision_recall_fscore_support(
            truth, predicted, labels=labels, zero_division=0
        )
        return cls(
            labels=labels,
            accuracy=round(float(np.mean(np.array(truth) == np.array(predicted))), 4),
            examples=len(truth),
            precision={label: round(float(v), 4) for label, v in zip(labels, precision, strict=True)},
            recall={label: round(float(v), 4) for label, v in zip(labels, recall, strict=True)},
            f1={label: round(float(v), 4) for label, v in zip(labels, f1, strict=True)},
            support={label: int(v) for label, v in zip(labels, support, strict=True)},
            confusion=confusion_matrix(truth, predicted, labels=labels).tolist(),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """The report as a table for people."""
        width = max(len(label) for label in self.labels)
        lines = [f"accuracy {self.accuracy:.4f} on {self.examples} example(s)"]
        if self.fold_accuracies:
            lines.append("per fold: " + ", ".join(f"{a:.4f}" for a in self.fold_accuracies))
        lines += ["", f"{'label':<{width}}  precision  recall  f1      support"]
        for label in self.labels:
            lines.append(
                f"{label:<{width}}  {self.precision[label]:<9.4f}  {self.recall[label]:<6.4f}  "
                f"{self.f1[label]:<6.4f}  {self.support[label]}"
            )
        cell = max(4, max(len(str(n)) for row in self.confusion for n in row) + 1)
        lines += ["", "confusion (rows: true label, columns: predicted, in the order above)"]
        lines.append(" " * width + "".join(f"{i + 1:>{cell}}" for i in range(len(self.labels))))
        for label, row in zip(self.labels, self.confusion, strict=True):
            if any(row):  # labels only ever predicted have no row of their own
                lines.append(f"{label:<{width}}" + "".join(f"{n:>{cell}}" for n in row))
        return "\n".join(lines)


def evaluate(model: TopicModel, examples: Sequence[Example]) -> Report:
    """The model's top label against the examples' labels."""
    predicted = model.predict([document(e.title, e.text) for e in examples])
    return Report.of([e.label for e in examples], predicted)


def _grouped_folds(examples: Sequence[Example], folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep exact-duplicate texts together."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = duplicate_groups(examples)
    if not 2 <= folds <= len(set(groups)):
        raise LabelledDataError(f"folds must be between 2 and the number of distinct texts ({len(set(groups))})")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(examples)), [e.label for e in examples], groups))


def cross_validate(
    examples: Sequence[Example],
    folds: int = 5,
    seed: int = 0,
    on_fold: Callable[[int], None] = lambda fold: None,
) -> Report:
    """K-fold cross-validation of ``train``: every example predicted by a model that never saw it."""
    predicted: list[str] = [""] * len(examples)
    fold_accuracies = []
    for fold, (train_idx, test_idx) in enumerate(_grouped_folds(examples, folds, seed)):
        model = train([examples[i] for i in train_idx])
        fold_predictions = model.predict([document(examples[i].title, examples[i].text) for i in test_idx])
        for i, label in zip(test_idx, fold_predictions, strict=True):
            predicted[i] = label
        fold_accuracies.append(
            round(float(np.mean([examples[i].label == p for i, p in zip(test_idx, fold_predictions, strict=True)])), 4)
        )
        on_fold(fold)
    report = Report.of([e.label for e in examples], predicted)
    report.fold_accuracies = fold_accuracies
    return report


def split_holdout(
    examples: Sequence[Example], fraction: float, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """(train, held out): about ``fraction`` held out, stratified, duplicates kept together."""
    if not 0 < fraction <= 0.5:
        raise LabelledDataError("the held-out fraction must be above 0 and at most 0.5")
    train_idx, test_idx = _grouped_folds(examples, max(2, math.floor(1 / fraction + 0.5)), seed)[0]
    return [examples[i] for i in train_idx], [examples[i] for i in test_idx]


# --- storing and loading ----------------------------------------------------------


def save_model(
    session: Session, model: TopicModel, home: Path, source: str, metrics: dict[str, Any], activate: bool
) -> int:
    """Register the model (the next version), write its file, optionally make it the active one."""
    data = model.to_bytes()
    folder = home / MODELS_DIRNAME
    folder.mkdir(parents=True, exist_ok=True)
    return classifier_models.add_model(
        session, list(model.labels), source, metrics, hashlib.sha256(data).hexdigest(), data,
        path_for=lambda version: str((folder / f"classifier-v{version}.joblib").resolve()), activate=activate,
    )


_loaded: TopicModel | None = None


def active_model(session: Session) -> TopicModel | None:
    """The active model, loaded only when its version differs from the one in memory."""
    global _loaded
    active = classifier_models.active_version(session)
    if active is None:
        return None
    version, sha256 = active
    if _loaded is None or (_loaded.version, _loaded.sha256) != (version, sha256):
        _loaded = TopicModel.from_bytes(classifier_models.model_data(session, version), version=version)
        log.info("loaded classifier model version %s (%s)", version, ", ".join(_loaded.labels))
    return _loaded


def stored_model(session: Session, version: int) -> TopicModel:
    """One stored version, active or not (for ``classifier evaluate --model``)."""
    return TopicModel.from_bytes(classifier_models.model_data(session, version), version=version)
