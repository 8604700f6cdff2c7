"""A swarm of minimal worker-era PB slaves in one process and one reactor, for scale tests.

    python tests/swarm.py ENDPOINT --first 0 --count 300 [--lifetime 120] [--keepalive 30]

Slave i logs in as s<i> with password pw-<i> from its own loopback address 127.1.x.y (one per
slave, as on a real farm: the master's login gate counts per address) and answers the attach
sequence as a buildbot-worker 4.3 does (docs/protocol.md §4.1): print, getWorkerInfo,
setBuilderList, then builder pings (§4.2), keepalives (§4.4) and a trivial shell command
(§5): a header, one stdout line, rc 0 and complete. A lost connection or a failed login is
retried with full-jitter backoff (the bbx slave's: at most 1 s, doubling, capped at 30 s); a
login unanswered within LOGIN_DEADLINE is given up and retried.

It prints one JSON line whenever its counts change (at most every REPORT_INTERVAL s):
{"attached": n, "logins": total successful logins, "failures": failed tries, "t": time}.
It stops by itself after --lifetime seconds, or when its stdin closes (its parent is gone).

Shared by tests/test_scale.py and bench/swarm.py; it lives in tests/ because the suite must
not depend on bench/, and bench/ already reaches into tests/ for its fixtures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.cred.credentials import UsernamePassword  # noqa: E402
from twisted.internet import defer, endpoints, protocol, stdio  # noqa: E402
from twisted.spread import pb  # noqa: E402

from bbx.pb.banana import FastBroker  # noqa: E402 - same wire format, less CPU per slave

# A bbx slave's retry policy (bbx/slave/connection.py): first retry within 1 s, doubling; the
# cap is lower than its 300 s so a bench's storm settles within its bound.
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
CONNECT_DEADLINE = 30.0
LOGIN_DEADLINE = 120.0
REPORT_INTERVAL = 0.2
WORKER_VERSION = "4.3.0"
COMMANDS = {"shell": "3.2", "uploadFile": "3.2", "downloadFile": "3.2", "mkdir": "3.2",
            "rmdir": "3.2", "stat": "3.2", "glob": "3.2", "listdir": "3.2"}


def slave_name(i: int) -> str:
    return f"s{i}"


def slave_password(i: int) -> str:
    return f"pw-{i}"


def source_address(i: int) -> str:
    """Slave i's own loopback address (Linux routes all of 127/8 to lo)."""
    return f"127.1.{i // 250}.{i % 250 + 1}"


class Builder(pb.Referenceable):
    """One worker-side builder: pings, startBuild, and a shell command answered at once."""

    def remote_print(self, message):
        return None

    def remote_startBuild(self):
        return None

    def remote_startCommand(self, step_ref, command_id, name, args):
        # Answered first, then the updates and complete, as a worker does (docs/protocol.md §3.2).
        def run():
            updates = [[{"header": f"{name} on the swarm\n"}, 0], [{"stdout": "ok\n"}, 0],
                       [{"rc": 0}, 0]]
            d = step_ref.callRemote("update", updates)
            d.addCallback(lambda _: step_ref.callRemote("complete", None))
            d.addErrback(lambda f: None)
        from twisted.internet import reactor

        reactor.callLater(0, run)
        return None

    def remote_interruptCommand(self, command_id, why):
        return None

    def remote_shutdown(self):
        return None


class Bot(pb.Referenceable):
    """The mind of one swarm slave: what a worker-era Bot answers during and after attach."""

    def __init__(self, name: str):
        self.name = name
        self.builders: dict[str, Builder] = {}

    def remote_print(self, message):
        return None

    def remote_getWorkerInfo(self):
        return {"admin": "swarm", "host": "swarm", "version": WORKER_VERSION,
                "worker_commands": COMMANDS, "basedir": f"/swarm/{self.name}",
                "system": "posix"}

    def remote_setBuilderList(self, wanted):
        self.builders = {name: self.builders.get(name) or Builder() for name, _ in wanted}
        return dict(self.builders)

    def remote_getCommands(self):
        return COMMANDS

    def remote_getVersion(self):
        return WORKER_VERSION

    def remote_shutdown(self):
        return None


class _Factory(pb.PBClientFactory):
    protocol = FastBroker
    noisy = False


class SwarmSlave:
    """One slave of the swarm: connect, log in, keep alive, retry with backoff."""

    def __init__(self, swarm: "Swarm", i: int):
        self.swarm = swarm
        self.i = i
        self.bot = Bot(slave_name(i))
        self.attempt = 0
        self.attached = False
        self.broker = None
        self.timer = None

    def start(self, delay: float = 0.0) -> None:
        self.timer = self.swarm.reactor.callLater(delay, self._try)

    @defer.inlineCallbacks
    def _try(self):
        self.timer = None
        swarm = self.swarm
        reactor = swarm.reactor
        factory = _Factory()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, swarm.host, swarm.port,
                                                timeout=CONNECT_DEADLINE,
                                                bindAddress=(source_address(self.i), 0))
        try:
            broker = yield endpoint.connect(factory)
        except Exception:
            self._failed()
            return
        self.broker = broker
        lost = []
        # Endpoints never call the factory's clientConnectionLost: watch the broker itself.
        broker.notifyOnDisconnect(lambda: lost.append(True) or self._lost())
        creds = UsernamePassword(slave_name(self.i).encode(), slave_password(self.i).encode())
        answering = factory.login(creds, client=self.bot)
        answering.addTimeout(LOGIN_DEADLINE, reactor)
        try:
            perspective = yield answering
        except Exception:
            if broker.transport is not None:
                broker.transport.abortConnection()
            if not lost:
                self._failed()
            return
        if lost:
            return
        self.attempt = 0
        self.attached = True
        swarm.attached += 1
        swarm.logins += 1
        swarm.changed()
        if swarm.keepalive > 0:
            self.timer = reactor.callLater(swarm.keepalive * random.uniform(0.5, 1.0),
                                           self._keepalive, perspective)

    def _keepalive(self, perspective):
        self.timer = None
        if not self.attached:
            return
        d = perspective.callRemote("keepalive")
        d.addErrback(lambda f: None)
        self.timer = self.swarm.reactor.callLater(self.swarm.keepalive, self._keepalive,
                                                  perspective)

    def _lost(self):
        if self.attached:
            self.attached = False
            self.swarm.attached -= 1
            self.swarm.changed()
        self._failed()

    def _failed(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.swarm.stopping:
            return
        self.swarm.failures += 1
        self.swarm.changed()
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        self.start(random.uniform(0.0, ceiling))

    def stop(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.broker is not None and self.broker.transport is not None:
            self.broker.transport.abortConnection()


class Swarm:
    """Slaves first..first+count-1 of a farm, against the master at host:port."""

    def __init__(self, reactor, host: str, port: int, first: int, count: int, keepalive: float,
                 out):
        self.reactor = reactor
        self.host, self.port = host, port
        self.keepalive = keepalive
        self.out = out
        self.attached = self.logins = self.failures = 0
        self.stopping = False
        self._report_timer = None
        self.slaves = [SwarmSlave(self, i) for i in range(first, first + count)]

    def start(self):
        for slave in self.slaves:
            slave.start()
        self.report()

    def changed(self):
        if self._report_timer is None and not self.stopping:
            self._report_timer = self.reactor.callLater(REPORT_INTERVAL, self.report)

    def report(self):
        self._report_timer = None
        line = {"attached": self.attached, "logins": self.logins, "failures": self.failures,
                "t": time.time()}
        self.out(json.dumps(line) + "\n")

    def stop(self):
        self.stopping = True
        for slave in self.slaves:
            slave.stop()


class _Stdio(protocol.Protocol):
    """Reports go out on stdout; stdin closing means the parent is gone."""

    def __init__(self, on_close):
        self.on_close = on_close

    def write(self, text: str) -> None:
        if self.transport is not None:
            self.transport.write(text.encode())

    def connectionLost(self, reason):
        self.on_close()


def raise_fd_limit(needed: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- driving swarms from a test or a bench (no reactor there: child processes and threads) --

def write_farm(directory, slaves: int, *, builders: int = 10, listen: str =
               "tcp:0:interface=127.0.0.1", extra: str = "") -> Path:
    """DIR/master.toml for slaves s0..s<slaves-1> spread over `builders` builders b0...;
    `extra` lines go into [master]. Returns its path."""
    from bbx.master.config import BuilderConfig, SlaveConfig, write_config

    builders = max(1, min(builders, slaves))
    slave_configs = [SlaveConfig(slave_name(i), slave_password(i)) for i in range(slaves)]
    builder_configs = [BuilderConfig(f"b{k}", tuple(slave_name(i) for i in range(k, slaves, builders)),
                                     f"b{k}") for k in range(builders)]
    path = write_config(directory, listen, slave_configs, builder_configs, force=True)
    if extra:
        text = path.read_text().replace("[master]\n", "[master]\n" + extra.rstrip() + "\n", 1)
        path.write_text(text)
    return path


class SwarmProcesses:
    """`processes` swarm children sharing slaves 0..count-1; their counts summed.

    `attached` and `logins` are the latest sums; `wait(predicate, timeout)` polls them.
    """

    def __init__(self, endpoint: str, count: int, *, processes: int = 1, lifetime: float = 120.0,
                 keepalive: float = 30.0, python: str = sys.executable):
        import subprocess
        import threading

        self.count = count
        self._lock = threading.Lock()
        self._latest: list[dict] = []
        self.procs = []
        per = -(-count // processes)
        for k, first in enumerate(range(0, count, per)):
            n = min(per, count - first)
            proc = subprocess.Popen(
                [python, str(Path(__file__).resolve()), endpoint, "--first", str(first),
                 "--count", str(n), "--lifetime", str(lifetime), "--keepalive", str(keepalive)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
            self.procs.append(proc)
            self._latest.append({"attached": 0, "logins": 0, "failures": 0})
            threading.Thread(target=self._read, args=(k, proc), daemon=True).start()

    def _read(self, k: int, proc) -> None:
        for line in proc.stdout:
            try:
                state = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self._latest[k] = state

    def _sum(self, key: str) -> int:
        with self._lock:
            return sum(s.get(key, 0) for s in self._latest)

    @property
    def attached(self) -> int:
        return self._sum("attached")

    @property
    def logins(self) -> int:
        return self._sum("logins")

    @property
    def failures(self) -> int:
        return self._sum("failures")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait(self, predicate, timeout: float, what: str) -> float:
        """Poll until predicate(self) holds; return the seconds it took. AssertionError on
        timeout, naming `what` and the counts."""
        start = time.monotonic()
        while not predicate(self):
            if time.monotonic() - start > timeout:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what} "
                                     f"(attached {self.attached}/{self.count}, logins "
                                     f"{self.logins}, failures {self.failures})")
            if any(p.poll() is not None for p in self.procs):
                raise AssertionError(f"a swarm process exited while waiting for {what}")
            time.sleep(0.05)
        return time.monotonic() - start

    def stop(self) -> None:
        import signal
        import subprocess

        for proc in self.procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint", help="tcp:host=127.0.0.1:port=N (the master's endpoint)")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=120.0)
    parser.add_argument("--keepalive", type=float, default=30.0)
    args = parser.parse_args(argv)
    fields = dict(f.split("=", 1) for f in args.endpoint.split(":")[1:] if "=" in f)
    host, port = fields.get("host", "127.0.0.1"), int(fields["port"])
    raise_fd_limit(args.count + 256)

    from twisted.internet import reactor

    def stop():
        if not swarm.stopping:
            swarm.stop()
            reactor.callLater(0.5, reactor.stop)

    io = _Stdio(stop)
    stdio.StandardIO(io)
    swarm = Swarm(reactor, host, port, args.first, args.count, args.keepalive, io.write)
    reactor.callLater(args.lifetime, stop)
    reactor.callWhenRunning(swarm.start)
    reactor.run()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main(sys.argv[1:]))
