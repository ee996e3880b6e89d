"""The storage layer: the SQL of feedmill, one module per domain.

Stage logic (``tasks/<stage>``) is plain functions of values; a stage's Celery task loads what
the logic needs through these modules, calls it, writes its decisions through them and hands
on. The command line (``workers/``) reads and changes the store through them too.

- ``articles``: articles in their stages (``run_article_stage``: claim, decide, write, advance;
  sending stored articles back to a stage), and the story clusters they form;
- ``feeds``: the feed list (added, exported, removed), the end of a poll and the next one, the
  publishing rate, WebSub subscription state;
- ``polls``: poll rows (a WebSub push becomes one);
- ``hosts``: per-host politeness slots shared by every worker;
- ``furniture``: the paragraph fingerprints clean learns each feed's furniture from;
- ``failures``: dead letters;
- ``rules``, ``classifier_models``: the operator's rules and trained topic models;
- ``clusters``: story clusters and the near-duplicate index (the dedupe stage's SQL);
- ``status``: the pipeline's counts for ``feedmill status`` and ``/metrics``.
"""
