"""A TCP listener that accepts connections and never answers: a Redis behind a
partition or mid-failover, as a client sees it (the connect succeeds, no reply
ever comes).

`accepted` is set at the first accepted connection, so a test can act once a
client is known to be stuck on it rather than after a sleep.
"""

from __future__ import annotations

import socket
import threading


class Blackhole:
    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="blackhole", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def connections(self) -> int:
        """Connections accepted so far (a client that retried would have opened more)."""
        return len(self._held)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed by stop()
                return
            self._held.append(conn)  # held open, never read from or written to
            self.accepted.set()

    def __enter__(self) -> Blackhole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # shutdown() wakes the blocked accept(); close() alone may not on Linux.
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
