"""The README's demo: feedmill on the embedded default against the example feed.

Serves ``examples/`` on a local port (playing the publisher), adds the seed
feed, runs ``feedmill run --once`` with real worker processes on SQLite and
the filesystem broker under ``./var/``, then exports and shows the result.
Run it twice: the second run stores nothing new.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
PORT = int(os.environ.get("FEEDMILL_DEMO_PORT", "8765"))


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def feedmill(*args: str) -> None:
    command = [str(Path(sys.executable).with_name("feedmill")), *args]
    print("$ feedmill " + " ".join(args), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "FEEDMILL_ALLOW_PRIVATE_NETWORKS": "1"})


def main() -> None:
    handler = functools.partial(QuietHandler, directory=str(EXAMPLES))
    server = ThreadingHTTPServer(("127.0.0.1", PORT), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        feedmill("feeds", "add", f"http://127.0.0.1:{PORT}/seed-news.xml")
        feedmill("run", "--once")
        feedmill("export", "--format", "jsonl", "--output", "var/articles.jsonl")
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
    finally:
        server.shutdown()
    print()
    for line in Path("var/articles.jsonl").read_text(encoding="utf-8").splitlines():
        article = json.loads(line)
        print(f"#{article['id']} {article['title']}")
        print(f"   topics {article['topics']}  places {article['places']}  language {article['language']}")
        print(f"   images {[image['caption'] for image in article['images']]}")
        print(f"   text: {article['text'][:160]}...")


if __name__ == "__main__":
    main()
