"""Helpers every test may use: bounded waits, child processes that are always cleaned up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
BBX = str(BIN / "bbx")

# How long a child may take to exit once told to (SIGINT, SIGTERM, Ctrl-C). A deadline against
# hangs, not a speed claim: with the suite in parallel beside other work on 2 cores, a bbx
# process's shutdown was seen to take more than 15 s.
EXIT_DEADLINE = 60.0


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value or `timeout` passes; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# Sockets held by refused_port() until this test process ends.
_HELD_PORTS: list[socket.socket] = []


def refused_port() -> int:
    """A loopback TCP port that refuses connections for the rest of this test process.

    The socket stays bound but never listens, so a connect gets "connection refused" — and,
    unlike a port that was bound and closed again, no other process (a master on port 0 in
    another xdist worker) can be given it meanwhile.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _HELD_PORTS.append(s)
    return s.getsockname()[1]


def marked(marker: str, *, anywhere: bool = False) -> set[int]:
    """Live processes running `marker` (their argv[0]), or with it `anywhere` in their argv."""
    found = set()
    needle = marker.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if not (needle in b"\0".join(argv) if anywhere else argv[0] == needle):
                continue
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        if data[data.rindex(b")") + 2:].split()[0] not in (b"Z", b"X"):
            found.add(int(name))
    return found


def alive(pid: int) -> bool:
    """Whether pid is a live (non-zombie) process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:].split()[0] not in (b"Z", b"X")


def file_contains(path, text: str) -> bool:
    try:
        return text in Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return False


class Proc:
    """A child process in its own session, killed with its whole group on cleanup."""

    def __init__(self, argv, *, cwd=None, env=None, log_path=None):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path) if log_path else None
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            self.argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if self.log_path:
            out.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_for_output(self, text: str, timeout: float = 20.0) -> None:
        def seen():
            if text in self.output():
                return True
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.argv[:3]} exited {self.popen.returncode} before printing {text!r}:\n"
                    + self.output()[-3000:])
            return False
        wait_until(seen, timeout, what=repr(text))

    def terminate(self, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.popen.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass


def run_bbx(*args, cwd=None, env=None, timeout: float = 60.0, input=None) -> subprocess.CompletedProcess:
    """Run the installed `bbx` CLI to completion and capture its output (text)."""
    full_env = dict(os.environ)
    full_env.pop("BBX_MASTER_DIR", None)
    full_env.update({"COLUMNS": "200", "NO_COLOR": "1"})
    full_env.update(env or {})
    return subprocess.run(
        [BBX, *[str(a) for a in args]], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL,
    )
