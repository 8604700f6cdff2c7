"""Hostile clients of a PB port, for the fault-injection tests and bench/hostile_port.py.

In-process helpers use plain blocking sockets (no reactor): floods, idle sockets, garbage.
PB logins run as a child process with its own reactor:

    python tests/hostile.py logins HOST PORT NAME PASSWORD COUNT
        COUNT logins one after another, each on a new connection; NAME "@N" is a name of N
        "x"; prints {"elapsed": s, "outcomes": [...], "times": [...]} as one JSON line
    python tests/hostile.py pinger HOST PORT USER PASSWORD BUILDER SECONDS
        logs in once, then pings BUILDER for SECONDS; prints {"pings": n, "worst": s}
    python tests/hostile.py call HOST PORT USER PASSWORD METHOD
        logs in and calls METHOD on the perspective; prints {"result": ...} or {"error": type}
    python tests/hostile.py raw-after-login HOST PORT USER PASSWORD FILE
        logs in, then writes the bytes of FILE on the connection; prints {"dropped": bool}
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# One Banana list-open token: a list of one element, whose element never comes.
LIST_OPEN = b"\x01\x80"
HOSTILE = str(Path(__file__).resolve())


def list_header(n: int) -> bytes:
    """The Banana header of a list of `n` elements (base-128 length, then 0x80)."""
    out = bytearray()
    while n:
        out.append(n & 0x7F)
        n >>= 7
    return bytes(out) + b"\x80"


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    return sock


def send_until_cut(port: int, data: bytes, chunk: int = 64 * 1024) -> int:
    """Send `data` on a new connection until it is all sent or the peer cuts us off;
    return how many bytes went out."""
    sock = connect(port)
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent:sent + chunk])
    except OSError:
        pass
    finally:
        sock.close()
    return sent


def is_closed(sock: socket.socket) -> bool:
    """True once the peer has closed `sock` (EOF or reset); never blocks."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of process `pid` from /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (peak RSS) of `pid` so it measures from now; False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- PB clients (run as a child: `python tests/hostile.py ...`) ----------------------------------

def _login(reactor, host, port, name, password, timeout=60.0):
    from twisted.cred.credentials import UsernamePassword
    from twisted.internet import defer
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.spread import pb

    factory = pb.PBClientFactory()
    broker = yield TCP4ClientEndpoint(reactor, host, port, timeout=10).connect(factory)
    d = factory.login(UsernamePassword(name.encode(), password.encode()))
    d.addTimeout(timeout, reactor)
    try:
        perspective = yield d
    except Exception:
        broker.transport.abortConnection()
        raise
    return perspective, broker


def _outcome(failure) -> str:
    text = failure.getErrorMessage()
    kind = getattr(failure.type, "__name__", str(failure.type))
    if "Unauthorized" in kind or "UnauthorizedLogin" in text or "refused login" in text:
        return "refused"
    if "Cancelled" in kind or "Timeout" in kind:
        return "timeout"
    return "dropped"


def main_logins(host, port, name, password, count):
    from twisted.internet import defer, task

    if name.startswith("@"):
        name = "x" * int(name[1:])

    @defer.inlineCallbacks
    def run(reactor):
        outcomes, times = [], []
        start = time.monotonic()
        for _ in range(count):
            t0 = time.monotonic()
            try:
                _, broker = yield defer.inlineCallbacks(_login)(reactor, host, port, name, password)
                outcomes.append("ok")
                broker.transport.loseConnection()
            except Exception:
                from twisted.python.failure import Failure
                outcomes.append(_outcome(Failure()))
            times.append(round(time.monotonic() - t0, 3))
            print(json.dumps({"tries": len(times), "at": round(time.monotonic() - start, 3)}),
                  flush=True)
        print(json.dumps({"elapsed": round(time.monotonic() - start, 3), "outcomes": outcomes,
                          "times": times}), flush=True)

    task.react(run)


def main_pinger(host, port, user, password, builder, seconds):
    from twisted.internet import defer, task

    @defer.inlineCallbacks
    def run(reactor):
        perspective, broker = yield defer.inlineCallbacks(_login)(reactor, host, port, user, password)
        print(json.dumps({"logged_in": True}), flush=True)
        worst, pings = 0.0, 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            d = perspective.callRemote("ping", builder)
            d.addTimeout(30, reactor)
            yield d
            worst = max(worst, time.monotonic() - t0)
            pings += 1
            yield task.deferLater(reactor, 0.05, lambda: None)
        broker.transport.loseConnection()
        print(json.dumps({"pings": pings, "worst": round(worst, 3)}), flush=True)

    task.react(run)


def main_raw_after_login(host, port, user, password, data):
    from twisted.internet import defer, task

    @defer.inlineCallbacks
    def run(reactor):
        _, broker = yield defer.inlineCallbacks(_login)(reactor, host, port, user, password)
        lost = defer.Deferred()
        broker.notifyOnDisconnect(lambda: lost.callback(True) if not lost.called else None)
        broker.transport.write(data)
        lost.addTimeout(20, reactor)
        try:
            dropped = yield lost
        except defer.TimeoutError:
            dropped = False
        print(json.dumps({"dropped": dropped}), flush=True)

    task.react(run)


def main_call(host, port, user, password, method):
    from twisted.internet import defer, task

    @defer.inlineCallbacks
    def run(reactor):
        perspective, broker = yield defer.inlineCallbacks(_login)(reactor, host, port, user, password)
        try:
            result = yield perspective.callRemote(method)
            print(json.dumps({"result": repr(result)}), flush=True)
        except Exception as e:
            kind = getattr(e, "remoteType", None) or type(e).__name__
            if isinstance(kind, bytes):
                kind = kind.decode()
            print(json.dumps({"error": kind}), flush=True)
        broker.transport.loseConnection()

    task.react(run)


def run_child(*args, timeout: float = 300.0) -> dict:
    """Run one of the modes above as a child and return its last JSON line."""
    import subprocess

    out = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True,
                         text=True, timeout=timeout, env=dict(os.environ))
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise AssertionError(f"hostile.py {args[0]} failed ({out.returncode}):\n"
                             f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "logins":
        main_logins(rest[0], int(rest[1]), rest[2], rest[3], int(rest[4]))
    elif mode == "pinger":
        main_pinger(rest[0], int(rest[1]), rest[2], rest[3], rest[4], float(rest[5]))
    elif mode == "call":
        main_call(rest[0], int(rest[1]), rest[2], rest[3], rest[4])
    elif mode == "raw-after-login":
        main_raw_after_login(rest[0], int(rest[1]), rest[2], rest[3], Path(rest[4]).read_bytes())
    else:
        raise SystemExit(f"unknown mode {mode!r}")
