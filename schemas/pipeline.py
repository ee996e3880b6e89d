"""The pipeline, declared once: every stage, its queue, its Celery task, and what follows it.

Everything else derives from ``STAGES``: Celery's queues, routes and task modules
(``workers/celery_app.py``), the scheduler's and sweeper's re-sends, the stage choices of
``feedmill reprocess``, ``requeue`` and ``failures``, the metrics' stage labels, and the
values of ``articles.stage``. A stage module never imports its successor: a task hands its
result on with ``tasks.base.hand_on``, which looks the successor up here and sends the
message by task name. Adding a stage is one entry here plus its module.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What a stage's message carries (``schemas/payloads.py``).
POLL, ARTICLES, PAGES, FEED, SUBSCRIPTION, NOTHING = "poll", "articles", "pages", "feed", "subscription", "nothing"


@dataclass(frozen=True)
class Stage:
    #: The stage's name: its failures' ``stage``, its metrics label and, for an article
    #: stage, the value of ``articles.stage`` while an article waits for it.
    name: str
    #: The Celery queue its messages go to, so each stage can be consumed and scaled on its own.
    queue: str
    #: The Celery task's name.
    task: str
    #: The module that defines the task (imported by every worker).
    module: str
    #: POLL (``PollRef``), ARTICLES (``ArticleBatch``), PAGES (an ``ArticleBatch`` of articles
    #: whose linked pages to fetch; they are in no stage for it), FEED (a feed id), SUBSCRIPTION
    #: (``{"subscription_id"}``) or NOTHING (periodic).
    message: str
    #: The stage its results are handed to, or None at the end of its line.
    successor: str | None = None
    #: An operator can send stored articles back to it (``reprocess``, ``requeue article``).
    reprocessable: bool = False
    #: It only announces a finished article (events to subscribers) and changes nothing a reader
    #: sees: its writes take no change value, and articles waiting for it are already readable.
    announces: bool = False

    @property
    def for_articles(self) -> bool:
        return self.message == ARTICLES


STAGES: tuple[Stage, ...] = (
    Stage("dispatch", "schedule", "feedmill.dispatch", "workers.scheduler", NOTHING),
    Stage("sweep", "schedule", "feedmill.sweep", "workers.scheduler", NOTHING),
    Stage("recover", "schedule", "feedmill.recover", "workers.scheduler", NOTHING),
    Stage("prune", "schedule", "feedmill.prune", "tasks.retention", NOTHING),
    Stage("websub", "fetch", "feedmill.websub_subscribe", "tasks.websub", FEED),
    Stage("fetch", "fetch", "feedmill.fetch", "tasks.fetch", POLL, successor="parse"),
    Stage("parse", "parse", "feedmill.parse", "tasks.parse", POLL, successor="clean"),
    Stage("clean", "clean", "feedmill.clean", "tasks.clean.stage", ARTICLES, successor="dedupe", reprocessable=True),
    Stage("fulltext", "fulltext", "feedmill.fulltext", "tasks.clean.stage", PAGES),
    Stage("fulltext_due", "fulltext", "feedmill.fulltext_due", "tasks.clean.stage", NOTHING),
    Stage("dedupe", "dedupe", "feedmill.dedupe", "tasks.dedupe", ARTICLES, successor="classify", reprocessable=True),
    Stage("classify", "classify", "feedmill.classify", "tasks.classify", ARTICLES, successor="deliver",
          reprocessable=True),
    Stage("deliver", "deliver", "feedmill.deliver", "tasks.deliver", ARTICLES, announces=True),
    Stage("send", "deliver", "feedmill.send", "tasks.deliver", SUBSCRIPTION),
    Stage("deliver_due", "deliver", "feedmill.deliver_due", "tasks.deliver", NOTHING),
)

BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
BY_TASK: dict[str, Stage] = {stage.task: stage for stage in STAGES}
#: Every stage's name, in pipeline order (the choices of ``feedmill failures --stage``).
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
#: Queues in pipeline order, each once.
QUEUES: tuple[str, ...] = tuple(dict.fromkeys(stage.queue for stage in STAGES))
#: The task modules every worker imports.
TASK_MODULES: tuple[str, ...] = tuple(dict.fromkeys(stage.module for stage in STAGES))
#: The article stages in pipeline order: the values ``articles.stage`` takes before ``DONE``.
ARTICLE_STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.for_articles)
#: ``articles.stage`` once every article stage has run.
DONE = "done"
#: Every value of ``articles.stage``, in order.
ARTICLE_POSITIONS: tuple[str, ...] = (*ARTICLE_STAGES, DONE)
#: The first stage an article waits for when parse stores it.
FIRST_ARTICLE_STAGE = ARTICLE_STAGES[0]
#: The first article stage that only announces. A finished article that a later write changes
#: (a dedupe re-pointing its cluster, a prune naming a new canonical) goes back to it, so that
#: subscribers hear of the change (an ``article.updated`` event).
ANNOUNCE_STAGE = next(stage.name for stage in STAGES if stage.for_articles and stage.announces)
#: ``articles.stage`` values of the articles readers see: past every stage that changes them.
READABLE_POSITIONS: tuple[str, ...] = ARTICLE_POSITIONS[ARTICLE_POSITIONS.index(ANNOUNCE_STAGE):]
#: The stages ``reprocess`` and ``requeue article`` may restart from.
REPROCESS_STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.reprocessable)


def _line() -> tuple[str, ...]:
    """The stages a polled entry passes, in order: from the stage that has a successor but is
    no stage's successor (fetch), along the successors."""
    successors = {stage.successor for stage in STAGES}
    (first,) = (stage for stage in STAGES if stage.successor is not None and stage.name not in successors)
    line = [first.name]
    while (successor := BY_NAME[line[-1]].successor) is not None:
        line.append(successor)
    return tuple(line)


#: The pipeline's line: fetch, parse, then the article stages.
LINE: tuple[str, ...] = _line()


def stage_named(name: str) -> Stage:
    return BY_NAME[name]


def stage_of_task(task_name: str) -> str:
    """feedmill.clean -> clean; an unknown task name gives its bare name."""
    stage = BY_TASK.get(task_name)
    return stage.name if stage is not None else task_name.removeprefix("feedmill.")


def article_position_after(stage: str) -> str:
    """The ``articles.stage`` value of an article that has passed ``stage``."""
    successor = BY_NAME[stage].successor
    return successor if successor is not None else DONE


def positions_from(stage: str) -> tuple[str, ...]:
    """``articles.stage`` values from ``stage`` on (``DONE`` included): articles that have reached it."""
    return ARTICLE_POSITIONS[ARTICLE_POSITIONS.index(stage):]


def article_stages_from(stage: str) -> tuple[str, ...]:
    """The article stages an article sent back to ``stage`` runs again, in order."""
    return ARTICLE_STAGES[ARTICLE_STAGES.index(stage):]


def _check(stages: tuple[Stage, ...]) -> None:
    """The declaration is consistent: names unique, successors declared, articles stay articles."""
    names = [stage.name for stage in stages]
    assert len(set(names)) == len(names), "stage names must be unique"
    for stage in stages:
        if stage.successor is not None:
            successor = BY_NAME[stage.successor]
            assert stage.message != ARTICLES or successor.for_articles, f"{stage.name} hands articles to {successor.name}"
    assert DONE not in names
    article_stages = [stage for stage in stages if stage.for_articles]
    first = next(i for i, stage in enumerate(article_stages) if stage.announces)
    assert all(stage.announces for stage in article_stages[first:]), "announcing stages come last"


_check(STAGES)
