"""Following the files a shell command names in `logfiles` while it runs (docs/protocol.md §5.4)."""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet import task
from twisted.logger import Logger

from bbx.slave.redact import Secrets, TextStream

log = Logger()

# Buildbot polls logfiles every 2 s (docs/protocol.md §5.4); we poll faster so logfile text arrives
# about as promptly as stdout. Reads are bounded so one huge file cannot stall the reactor.
LOGFILE_POLL_INTERVAL = 0.5
LOGFILE_READ_SIZE = 64 * 1024

class LogfileWatcher:
    """Sends what is written to one file during the command as `log` updates (docs/protocol.md §5.4).

    As in the worker: with `follow` only text appended after the command started is sent;
    without it, the whole file is sent once it differs from how it was at start (a stale file
    from an earlier build is ignored until rewritten). `secrets` are replaced before sending;
    bytes that may start one wait for the next poll (bbx/slave/redact.py).
    """

    def __init__(self, name: str, path: str, follow: bool, emit: Callable[[str, str], None], *,
                 secrets: Secrets | None = None) -> None:
        self.name = name
        self.path = path
        self.follow = follow
        self.emit = emit
        self.initial = self._stat()
        self.file = None
        self.text = TextStream(secrets)
        self.loop: task.LoopingCall | None = None

    def _stat(self):
        try:
            s = os.stat(self.path)
        except OSError:
            return None
        return (s.st_ino, s.st_ctime_ns, s.st_mtime_ns, s.st_size)

    def start(self, clock) -> None:
        self.loop = task.LoopingCall(self.poll)
        self.loop.clock = clock
        self.loop.start(LOGFILE_POLL_INTERVAL, now=True).addErrback(
            lambda f: log.failure("logfile watcher for {path} failed", f, path=self.path))

    def poll(self) -> None:
        if self.file is None:
            now = self._stat()
            if now is None:
                self.initial = None  # deleted: whatever appears next is new
                return
            if now == self.initial:
                return
            try:
                self.file = open(self.path, "rb")
            except OSError:
                return
            if self.follow and self.initial is not None and self.initial[0] == now[0]:
                self.file.seek(self.initial[3])
        read = False
        for _ in range(64):  # bounded per poll; the rest comes next time
            data = self.file.read(LOGFILE_READ_SIZE)
            if not data:
                break
            read = True
            self._send(self.text.feed(data))
        if not read and self.text.pending:
            self._send(self.text.release())  # nothing came to complete a secret

    def _send(self, text: str) -> None:
        if text:
            self.emit(self.name, text)

    def stop(self) -> None:
        """Read what is left, then stop."""
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        try:
            self.poll()
        except OSError:
            pass
        if self.file is not None:
            self._send(self.text.close())
            self.file.close()
            self.file = None
