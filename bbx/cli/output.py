"""Where the operator commands write: the two rich consoles, JSON output, connection options.

Kept free of Twisted so that importing it costs nothing at start-up.
"""

from __future__ import annotations

import sys
from typing import Any


def conn(master_dir, master, user, password, timeout=None, ca=None, fingerprint=None,
         insecure=False):
    """The connection options every operator command takes, as one object."""
    from .client import LOGIN_TIMEOUT, ConnOptions

    return ConnOptions(master_dir=master_dir, master=master, user=user, password=password,
                       timeout=LOGIN_TIMEOUT if timeout is None else timeout,
                       ca=ca, fingerprint=fingerprint, insecure=insecure)


class LazyConsole:
    """A rich Console made on first use, so that commands which print plain text (a pipe,
    --json) never import rich. `is_terminal` is answered without rich when the environment
    does not force rich's terminal detection."""

    _FORCING = ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE")

    def __init__(self, stderr: bool = False):
        self._stderr = stderr
        self._console = None

    @property
    def is_terminal(self) -> bool:
        import os

        if self._console is None and not any(os.environ.get(k) for k in self._FORCING):
            stream = sys.stderr if self._stderr else sys.stdout
            return bool(getattr(stream, "isatty", lambda: False)())
        return self.real.is_terminal

    @property
    def real(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name):
        return getattr(self.real, name)


def consoles():
    """(stdout console, stderr console), each a LazyConsole."""
    return LazyConsole(), LazyConsole(stderr=True)


def to_json(value: Any) -> str:
    """Plain JSON text for --json output (no markup, stable key order)."""
    import json as _json  # here: `bbx --help` and plain-text runs need no JSON

    return _json.dumps(value, indent=2, sort_keys=True, default=str)


def print_json(value: Any) -> None:
    """One JSON document on stdout, no markup."""
    sys.stdout.write(to_json(value) + "\n")
    sys.stdout.flush()


def plain(line: str = "") -> None:
    """One line of plain text on stdout (for short answers that need no rich rendering)."""
    sys.stdout.write(line + "\n")


def json_line(value: Any) -> None:
    """One compact JSON line on stdout (for streams of events)."""
    import json as _json

    sys.stdout.write(_json.dumps(value, default=str) + "\n")
    sys.stdout.flush()
