"""Operators' trained topic models (``classifier_models``): the model file's bytes, so workers on
any host can load it, and which one is active (at most one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session

from schemas.models import ClassifierModel


def add_model(
    session: Session,
    labels: list[str],
    source: str,
    metrics: dict[str, Any],
    sha256: str,
    data: bytes,
    *,
    path_for: Callable[[int], str],
    activate: bool,
) -> int:
    """Store a model as the next version; ``path_for(version)`` is where its file is written."""
    row = ClassifierModel(labels=labels, source=source, metrics=metrics, sha256=sha256, data=data, active=False)
    session.add(row)
    session.flush()
    row.path = path_for(row.id)
    with open(row.path, "wb") as file:
        file.write(data)
    if activate:
        set_active(session, row.id)
    return row.id


def set_active(session: Session, version: int | None) -> None:
    """Make ``version`` the model workers use; None goes back to the default."""
    if version is not None and session.get(ClassifierModel, version) is None:
        raise LookupError(f"no classifier model version {version}")
    session.execute(update(ClassifierModel).where(ClassifierModel.active).values(active=False))
    session.flush()
    if version is not None:
        session.execute(update(ClassifierModel).where(ClassifierModel.id == version).values(active=True))


def active_version(session: Session) -> tuple[int, str] | None:
    """The active model's version and file hash: one small query per classify batch."""
    row = session.execute(select(ClassifierModel.id, ClassifierModel.sha256).where(ClassifierModel.active)).first()
    return (row.id, row.sha256) if row is not None else None


def model_data(session: Session, version: int) -> bytes:
    data = session.scalar(select(ClassifierModel.data).where(ClassifierModel.id == version))
    if data is None:
        raise LookupError(f"no classifier model version {version}")
    return data


def model_path(session: Session, version: int) -> str | None:
    return session.scalar(select(ClassifierModel.path).where(ClassifierModel.id == version))


def list_models(session: Session) -> list[Row[Any]]:
    """Every stored version without its bytes, oldest first."""
    return list(session.execute(
        select(ClassifierModel.id, ClassifierModel.created_at, ClassifierModel.labels, ClassifierModel.source,
               ClassifierModel.path, ClassifierModel.metrics, ClassifierModel.active).order_by(ClassifierModel.id)
    ))
