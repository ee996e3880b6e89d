"""The clean stage: one raw feed entry in, plain text, safe HTML and image data out.

Feed bodies repeat the title and photo captions, carry share widgets, tracking pixels,
scripts and broken encodings. Dedupe, classify and display all need one clean version,
so it is made once here. By concern, all pure functions but the last:

- ``text``: the HTML tokenizer (paragraphs, images) and sanitized HTML output;
- ``mojibake``: Unicode repair; ``urls``: ``canonical_url`` and link resolution;
- ``boilerplate``: widgets, prompts, repeated titles and captions;
- ``furniture``: a feed's recurring paragraphs, learned from its recent articles;
- ``entry``: one entry cleaned (``clean_entry``), or its linked page's article used instead;
- ``stage``: the Celery task ``feedmill.clean``, which loads and writes through ``tasks.storage``.

docs/clean.md has the rules and the figures.
"""
