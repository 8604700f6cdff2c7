"""Pid files of running masters and slaves: read them, and tell a live bbx process from a stale pid.

Shared by both roles and the CLI (it knows nothing of PB or of either role).
"""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """True if process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_bbx(pid: int) -> bool:
    """True unless /proc shows that `pid` is some other program than bbx.

    A pid file left behind by a crash can name a pid the kernel has since given to an
    unrelated process; `stop` must not signal that one. Where /proc cannot tell, assume bbx.
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return any(b"bbx" in arg for arg in argv[:4])


def read(path: Path) -> int | None:
    """The pid in `path`, or None when there is no readable pid in it."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def running(path: Path) -> int | None:
    """The pid in `path` when it is a live bbx process, else None (the file is stale)."""
    pid = read(path)
    if pid is None or pid == os.getpid() or not alive(pid) or not is_bbx(pid):
        return None
    return pid


def write(path: Path) -> None:
    """Record this process's pid in `path` (mode 0600: a file of the role's own)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def remove_if_mine(path: Path) -> None:
    """Remove `path` if it still names this process (a newer instance may have replaced it)."""
    if read(path) == os.getpid():
        Path(path).unlink(missing_ok=True)


class StopTimeout(Exception):
    """The process got SIGTERM but was still alive at the deadline."""


def stop(path: Path, timeout: float, poll: float = 0.05) -> tuple[str, int | None]:
    """SIGTERM the bbx process named in `path` and wait for it to go (command-line use only).

    Returns ("not running", None), ("stale", pid) when the file named a dead or foreign
    process (the file is removed), or ("stopped", pid). Raises PermissionError when the
    process may not be signalled and StopTimeout when it outlives `timeout`.
    """
    import signal
    import time

    pid = read(path)
    if pid is None:
        return "not running", None
    if not alive(pid) or not is_bbx(pid):
        Path(path).unlink(missing_ok=True)
        return "stale", pid
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "stale", pid
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise StopTimeout(pid)
        time.sleep(poll)
    return "stopped", pid
