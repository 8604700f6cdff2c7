"""A loopback TCP proxy that can stop forwarding without closing anything: a half-open link.

    proxy = FreezableProxy(target_port)      # listens on 127.0.0.1:proxy.port
    ... connect through proxy.port ...
    proxy.freeze()                           # bytes stop flowing both ways; sockets stay open
    proxy.close()

It runs in a thread of the test process (tests are not reactor code); every wait is bounded.
"""

from __future__ import annotations

import selectors
import socket
import threading


class FreezableProxy:
    """Forwards every connection on `port` to 127.0.0.1:`target_port` until frozen."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        """Stop moving bytes; keep every socket open (neither end sees a close)."""
        self.frozen.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self._sockets + [self.listener]:
            s.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        self.listener.setblocking(False)
        sel.register(self.listener, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            if self.frozen.is_set():
                self._stop.wait(0.1)
                continue
            for key, _ in sel.select(timeout=0.1):
                if key.data is None:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                    for s in (client, upstream):
                        s.setblocking(False)
                        self._sockets.append(s)
                    sel.register(client, selectors.EVENT_READ, upstream)
                    sel.register(upstream, selectors.EVENT_READ, client)
                    continue
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                key.data.setblocking(True)
                key.data.sendall(data)
                key.data.setblocking(False)
        sel.close()
