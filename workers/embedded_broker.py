"""The embedded broker: kombu's filesystem transport, made safe between processes.

kombu's own transport writes a message file in place, so a consumer in
another process can pick the file up half-written and lose the message (seen
here as a JSONDecodeError in the worker). This one writes each message under
a name no consumer looks for and renames it into place, and claims a message
by renaming it into a folder of claimed files, which only one consumer can
win. Renames within one folder tree are atomic on POSIX.

What it cannot give is redelivery: a message claimed by a worker that then
dies is gone, as with the original transport. The database still knows the
work is unfinished, and ``run --once`` and the sweeper re-enqueue it.
"""

from __future__ import annotations

import os
import uuid
from functools import cached_property
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

#: Suffix of a message still being written; consumers skip it.
WRITING = ".writing"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        with open(final + WRITING, "wb") as message:
            message.write(str_to_bytes(dumps(payload)))
        os.replace(final + WRITING, final)

    @cached_property
    def _claimed_folder(self) -> str:
        folder = os.path.join(os.path.dirname(self.data_folder_in.rstrip("/")), "claimed")
        os.makedirs(folder, exist_ok=True)
        return folder

    def _get(self, queue: str) -> Any:
        # Called for every queue at every poll, and the folder holds every queue's messages:
        # sort only this queue's names, oldest first.
        wanted = f"{queue}.msg"
        for name in sorted(name for name in os.listdir(self.data_folder_in) if name.partition(".")[2] == wanted):
            claimed = os.path.join(self._claimed_folder, f"{os.getpid()}-{name}")
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except OSError:
                continue  # another consumer claimed it first
            try:
                with open(claimed, "rb") as message:
                    payload = message.read()
            finally:
                os.remove(claimed)
            return loads(bytes_to_str(payload))
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel
