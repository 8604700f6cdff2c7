"""DIR/slave.state: what the running slave knows about its connection, for `bbx slave status`.

The slave rewrites this small JSON file (atomically, mode 0600) whenever its connection
changes state, so that another process never has to read the log to learn it:

    {"state": "attached" | "connecting" | "logging in" | "disconnected" | "stopped",
     "reason": "" | "unauthorized" | "refused" | "unreachable" | "timeout" | "duplicate"
               | "lost" | "untrusted" (the master's TLS certificate was refused) | "error",
     "detail": "the log's sentence", "since": seconds since the epoch, "pid": int,
     "master": "the connection string", "attempt": failures since the last attach}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STATE_NAME = "slave.state"
STATES = ("connecting", "logging in", "attached", "disconnected", "stopped")
REASONS = ("", "unauthorized", "refused", "unreachable", "timeout", "duplicate", "lost", "untrusted",
           "error")


class StateFile:
    """Writes DIR/slave.state for one slave process."""

    def __init__(self, basedir: str, master: str, clock):
        self.path = Path(basedir) / STATE_NAME
        self.master = master
        self.clock = clock
        self.current: dict = {}

    def write(self, state: str, reason: str = "", detail: str = "", attempt: int = 0) -> None:
        record = {"state": state, "reason": reason, "detail": detail,
                  "since": round(self.clock.seconds(), 3), "pid": os.getpid(),
                  "master": self.master, "attempt": attempt}
        self.current = record
        tmp = self.path.with_name(f".{STATE_NAME}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a full disk must not stop the slave; status then shows the older state


def read(basedir) -> dict | None:
    """The last state a slave wrote in `basedir`, or None."""
    try:
        data = json.loads((Path(basedir) / STATE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
