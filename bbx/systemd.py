"""sd_notify(3) without libsystemd: tell systemd (Type=notify) that a role is ready or stopping.

systemd passes $NOTIFY_SOCKET, a unix datagram socket (a leading "@" means the abstract
namespace); a service sends newline-separated assignments such as READY=1, STATUS=...,
STOPPING=1. Outside systemd the variable is unset and notify() does nothing. Unit files that
use it: contrib/systemd/.
"""

from __future__ import annotations

import os
import socket


def notify(*assignments: str, environ=None) -> bool:
    """Send READY=1 / STATUS=... / STOPPING=1 ...; True when a socket was there to take it."""
    environ = os.environ if environ is None else environ
    path = environ.get("NOTIFY_SOCKET", "")
    if not path or not assignments:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    message = "\n".join(assignments).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the reactor on a busy systemd: a lost status line is harmless.
            sock.setblocking(False)
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def status(text: str) -> bool:
    """STATUS=text (one line; systemctl status shows it)."""
    return notify("STATUS=" + " ".join(text.split()))
