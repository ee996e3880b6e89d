"""A small TCP proxy a test puts between feedmill and a real server, to cut the line.

``TcpProxy(("127.0.0.1", 5432))`` listens on a free local port and forwards every
connection to the target. ``cut()`` resets every live connection and, until
``restore()``, resets each new one as soon as it is accepted: to a client this is a
database that went away and refuses to come back, without touching the real
server (which other people share). Threads, one pair per connection; fine for the
few dozen connections a test's worker processes open.
"""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType


def _reset(sock: socket.socket) -> None:
    """Close at once with a TCP RST (SO_LINGER 0), as a crashed or unreachable server looks.

    ``shutdown`` first: it wakes a pump thread blocked in ``recv`` on this socket,
    which ``close`` alone would not.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class TcpProxy:
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._cut = False
        self._closed = False
        #: Connections forwarded, and connections reset while cut (for test assertions).
        self.accepted = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- control

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Reset every live connection; reset new ones until ``restore()``."""
        with self._lock:
            self._cut = True
            live, self._live = self._live, set()
        for sock in live:
            _reset(sock)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def live_connections(self) -> int:
        with self._lock:
            return len(self._live) // 2

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._thread.join(5)
        self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # ---------------------------------------------------------------- forwarding

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._cut:  # cut while we were connecting
                    self.refused += 1
                    _reset(client)
                    _reset(upstream)
                    continue
                self._live.update((client, upstream))
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # One side finished or failed: end both, once.
            with self._lock:
                mine = source in self._live or sink in self._live
                self._live.discard(source)
                self._live.discard(sink)
            if mine:
                for sock in (source, sink):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    sock.close()
