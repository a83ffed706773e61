"""A TCP proxy to PostgreSQL on loopback that cuts connections where a failover would.

``cut`` arms it for the next COMMIT a client sends: ``"before"`` closes that connection
without passing the COMMIT on (PostgreSQL rolls the transaction back: nothing was committed),
``"after"`` passes it on, lets the server commit, then closes the connection without passing the
answer back (committed, but the client cannot know). ``refuse`` makes it refuse new
connections for a while, as a PostgreSQL that is down (or not yet promoted) does, after cutting
the ones it has.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from typing import Literal

Cut = Literal["before", "after"]


class PgProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._cut: Cut | None = None
        self._refuse_until = 0.0
        self._lock = threading.Lock()
        self.cuts = 0  # connections cut so far
        self._closing = False
        self._live: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, when: Cut) -> None:
        with self._lock:
            self._cut = when

    def refuse(self, seconds: float) -> None:
        """Cut every connection and refuse new ones for ``seconds``, as a server that died."""
        self._refuse_until = time.monotonic() + seconds
        with self._lock:
            live, self._live = self._live, []
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closing = True
        self.server.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _take_cut(self, data: bytes) -> Cut | None:
        if b"COMMIT" not in data:
            return None
        with self._lock:
            when, self._cut = self._cut, None
            if when is not None:
                self.cuts += 1
            return when

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        with self._lock:
            self._live += [client, upstream]
        try:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], 30)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        when = self._take_cut(data)
                        if when == "before":
                            return
                        upstream.sendall(data)
                        if when == "after":
                            time.sleep(0.3)  # the server commits; its answer is never read
                            return
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
