"""Where the operator commands write: the two rich consoles, JSON output, connection options.

Kept free of Twisted so that importing it costs nothing at start-up.
"""

from __future__ import annotations

import json as _json
import sys
from typing import Any


def conn(master_dir, master, user, password, ca=None, fingerprint=None, insecure=False):
    """The connection options every operator command takes, as one object."""
    from .client import ConnOptions

    return ConnOptions(master_dir=master_dir, master=master, user=user, password=password,
                       ca=ca, fingerprint=fingerprint, insecure=insecure)


def consoles():
    """(stdout console, stderr console)."""
    from rich.console import Console

    return Console(), Console(stderr=True)


def print_json(value: Any) -> None:
    """One JSON document on stdout, no markup."""
    from .render import to_json

    sys.stdout.write(to_json(value) + "\n")
    sys.stdout.flush()


def json_line(value: Any) -> None:
    """One compact JSON line on stdout (for streams of events)."""
    sys.stdout.write(_json.dumps(value, default=str) + "\n")
    sys.stdout.flush()
